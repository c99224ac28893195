"""The page's words (scripts/app.py): key -> (English, Chinese). The labels and explanations of its
three tabs, the captions and details of a picture's preparation, the doubts, and the notices a
bad input gets."""

from __future__ import annotations

PAGE: dict[str, tuple[str, str]] = {
    # the page
    "page.title": ("fmnist: cross-entropy", "fmnist：交叉熵"),
    "page.intro": (
        "# fmnist: cross-entropy you can see\n"
        "Softmax turns a model's raw scores (logits) into probabilities q; cross-entropy compares "
        "q with the truth p (one-hot on the true class): loss = -sum_c p_c log q_c = -log q[true "
        "class].",
        "# fmnist：看得见的交叉熵\n"
        "softmax 把模型输出的原始分数（logits）变成概率 q；交叉熵拿 q 和真实分布 p（真实类别上为 1 "
        "的独热向量）作比较：损失 = -sum_c p_c log q_c = -log q[真实类别]。",
    ),
    "page.language": ("language", "语言"),
    "page.tab.lesson": ("Cross-entropy by hand", "手算交叉熵"),
    "page.tab.picture": ("Your picture", "你的图片"),
    "page.tab.learning": ("Watch it learn", "看它学习"),
    "page.no_model": (
        "No trained model yet: {fix}, then start the page again.",
        "还没有训练好的模型：{fix}，然后重新启动页面。",
    ),
    "page.no_model_fix": (
        "train one with `make train` (or `python scripts/train.py experiment=fast`, about a "
        "minute)",
        "用 `make train` 训练一个（或者 `python scripts/train.py experiment=fast`，大约一分钟）",
    ),
    # the lesson tab
    "lesson.from_logits": (
        "### From logits\nEdit the table: one sample per row, its **target** class first, then its "
        "logits. Softmax gives q; the loss of a sample is -log q[target]; the batch's loss is "
        "their mean, worked out with `fmnist.losses` and checked against PyTorch's.",
        "### 从 logits 出发\n编辑表格：每行一个样本，先写它的**目标**类别，再写它的 "
        "logits。softmax 给出 q；一个样本的损失是 -log q[目标]；一个批量的损失是它们的平均值，"
        "由 `fmnist.losses` 算出，并与 PyTorch 的结果核对。",
    ),
    "lesson.from_probs": (
        "### From probabilities\nA half-trained model's q for a test image of a **Coat** (class "
        "4): the loss looks only at q[4]. Edit q (each row must sum to 1) or the target.",
        "### 从概率出发\n一个训练到一半的模型对一张**外套**（第 4 类）测试图像给出的 q：损失只看 "
        "q[4]。可以编辑 q（每行之和必须为 1）或目标。",
    ),
    "lesson.table": (
        "{column} per class, one sample per row (the target class first)",
        "每个类别的 {column}，每行一个样本（先写目标类别）",
    ),
    "lesson.q_table": ("q and the loss per sample", "每个样本的 q 和损失"),
    "lesson.plot": ("the loss against q[target]", "损失随 q[目标] 的变化"),
    "lesson.steps": (
        "Step by step, as scripts/explain.py prints it",
        "逐步计算，与 scripts/explain.py 的输出相同",
    ),
    "lesson.explanation": ("explanation", "讲解"),
    "lesson.numbers": ("The numbers (JSON)", "数值（JSON）"),
    "lesson.numbers_label": ("numbers", "数值"),
    # the picture tab
    "picture.intro": (
        "Show the model a picture: it is prepared as `scripts/predict.py` does it (made "
        "Fashion-MNIST-like: grey, light on black, cropped, 28x28), then predicted. Choose the "
        "true class to see why a sure wrong answer costs more than an unsure one.  \nModel: "
        "{model}",
        "给模型看一张图片：它会像 `scripts/predict.py` 那样先被预处理（变得像 Fashion-MNIST："
        "灰度、黑底亮物、裁剪、28x28），然后再预测。选择真实类别，就能看到为什么有把握的错误答案比"
        "犹豫的答案代价更大。  \n模型：{model}",
    ),
    "picture.tab.upload": ("Upload", "上传"),
    "picture.tab.webcam": ("Webcam", "摄像头"),
    "picture.tab.draw": ("Draw", "画一张"),
    "picture.tab.test": ("Test image", "测试图像"),
    "picture.file": ("A picture ({formats}; at most {size})", "一张图片（{formats}；最大 {size}）"),
    "picture.webcam": ("webcam", "摄像头"),
    "picture.webcam_button": ("Predict this shot", "预测这张照片"),
    "picture.drawing": ("draw a piece of clothing", "画一件衣物"),
    "picture.drawing_button": ("Predict the drawing", "预测这幅画"),
    "picture.index": ("test image index", "测试图像编号"),
    "picture.test_button": ("Predict the test image", "预测这张测试图像"),
    "picture.truth": ("true class", "真实类别"),
    "picture.unknown": ("(unknown)", "（未知）"),
    "picture.invert": ("invert (auto: when the background is light)", "反相（auto：背景较亮时）"),
    "picture.crop": ("crop to the object", "裁剪到物体"),
    "picture.top": ("prediction", "预测"),
    "picture.bars": ("q: the model's probability for each class", "q：模型给每个类别的概率"),
    "picture.bars.class": ("class", "类别"),
    "picture.bars.kind": ("class is", "类别是"),
    "picture.bars.top": ("the top class", "概率最高的类别"),
    "picture.bars.true": ("the true class", "真实类别"),
    "picture.bars.both": ("top and true", "最高且真实"),
    "picture.bars.other": ("another class", "其他类别"),
    "picture.steps": ("preparation, step by step", "预处理，一步一步"),
    "picture.lesson_hint": (
        "Choose the true class to see p and the loss worked out term by term.",
        "选择真实类别，就能看到 p 和逐项算出的损失。",
    ),
    "picture.lesson": (
        "the loss against the true class, term by term (predict.py target=...)",
        "相对于真实类别的损失，逐项计算（predict.py target=...）",
    ),
    "picture.numbers": (
        "The numbers (JSON, as predictions.json has them)",
        "数值（JSON，与 predictions.json 中的相同）",
    ),
    "picture.numbers_label": ("prediction", "预测"),
    "picture.given": ("{source}, as given", "{source}，原图"),
    "picture.source.drawing": ("drawing", "画作"),
    "picture.source.webcam": ("webcam shot", "摄像头照片"),
    "picture.source.test": ("test image #{index}", "测试图像 #{index}"),
    "picture.step.grayscale": ("grayscale", "灰度"),
    "picture.step.evened": ("uneven light evened", "不均匀的光照被拉平"),
    "picture.step.inverted": (
        "inverted: each pixel's distance from the background",
        "反相：每个像素与背景的距离",
    ),
    "picture.step.contrast": ("each pixel's distance from the background", "每个像素与背景的距离"),
    "picture.step.mask": ("the object found (mask)", "找到的物体（掩码）"),
    "picture.step.crop": ("cropped to the object", "裁剪到物体"),
    "picture.step.turned and cropped": ("turned upright and cropped", "转正并裁剪"),
    "picture.step.input": ("what the model sees (28x28)", "模型看到的图像（28x28）"),
    "picture.doubts": ("- doubts: {doubts}", "- 疑点：{doubts}"),
    "picture.no_doubts": ("none (the flag is not raised)", "无（没有发出警示）"),
    # the picture tab: bad input, one line each
    "picture.error.no_file": ("no picture: upload one first", "没有图片：请先上传一张"),
    "picture.error.no_index": (
        "give a test image index, 0 to 9999",
        "请给出测试图像编号，0 到 9999",
    ),
    "picture.error.index": (
        "test image {index} does not exist: the test split has {count} images (0..{last})",
        "测试图像 {index} 不存在：测试集共有 {count} 张图像（0..{last}）",
    ),
    "picture.error.class": (
        "{truth} is not a class: choose one of {classes}",
        "{truth} 不是一个类别：请从 {classes} 中选择",
    ),
    "picture.error.empty_drawing": (
        "the drawing is empty: draw a piece of clothing first",
        "画布是空的：请先画一件衣物",
    ),
    "picture.error.no_shot": (
        "there is no webcam shot (or it is one flat colour): take one first",
        "没有摄像头照片（或者它只有一种颜色）：请先拍一张",
    ),
    # fmnist.predict: reading a picture
    "predict.model.checkpoint": (
        "{model} from {path} (step {step}; {mode}, TTA {tta}, as its run)",
        "{path} 中的 {model}（第 {step} 步；{mode}，TTA {tta}，与训练时相同）",
    ),
    "predict.error.bomb": (
        "{path} is too large to decode safely ({size}; Pillow refuses more than {limit} as a "
        "possible decompression bomb): resize it to a few megapixels first",
        "{path} 太大，无法安全解码（{size}；Pillow 会拒绝超过 {limit} 像素的图片，以防解压炸弹）："
        "请先把它缩小到几百万像素",
    ),
    "predict.error.pixels": ("{n} pixels", "{n} 像素"),
    "predict.error.many": ("too many pixels", "像素太多"),
    "predict.error.unknown": (
        "{path} is not a picture Pillow can read: give {formats} files",
        "{path} 不是 Pillow 能读取的图片：请给出 {formats} 文件",
    ),
    "predict.error.damaged": (
        "{path} could not be read ({reason}): the file is damaged or incomplete; save or copy it "
        "again",
        "{path} 无法读取（{reason}）：文件已损坏或不完整；请重新保存或复制",
    ),
    # doubts (fmnist.prepare.flags, fmnist.ood) and a preparation that found no object
    "doubt.unsure": ("unsure: top probability {p} < {limit}", "不确定：最高概率 {p} < {limit}"),
    "doubt.pixels": (
        "unlike the training images: pixel {name} {value} outside {low}..{high}",
        "与训练图像不同：像素的 {name} 为 {value}，不在 {low}..{high} 之内",
    ),
    "doubt.energy": (
        "unlike the training images to the model: energy {score} > {threshold} ({share} of "
        "training images are below it)",
        "在模型看来与训练图像不同：能量 {score} > {threshold}（{share} 的训练图像低于它）",
    ),
    "doubt.nothing": (
        "no object found: nothing stands out from the background",
        "没有找到物体：没有什么从背景中突出出来",
    ),
    "doubt.everything": (
        "no object found: the object's box is {share} of the picture and it covers {border} of "
        "the border (the background could not be told from it)",
        "没有找到物体：物体的框占图片的 {share}，并覆盖了 {border} 的边框（无法把背景和它区分开）",
    ),
    # the learning tab
    "learning.intro": (
        "16 fixed validation images, epoch by epoch: what the model predicts for each (q) and what "
        "that costs (the loss). At epoch 0 the model is untrained: q is about 1/10 for every class "
        "and every loss about ln 10. Move the slider to watch q sharpen.",
        "16 张固定的验证图像，一个迭代周期接一个迭代周期：模型对每张图像的预测（q）以及它的代价"
        "（损失）。第 0 个迭代周期时模型还未训练：每个类别的 q 都约为 1/10，每个损失都约为 ln 10。"
        "拖动滑块，看 q 如何变得越来越确定。",
    ),
    "learning.run": ("run", "训练运行"),
    "learning.epoch": ("epoch (0: untrained)", "迭代周期（0：未训练）"),
    "learning.images": (
        "the 16 images, as the model sees them at this epoch",
        "这 16 张图像，以及模型在这个迭代周期对它们的看法",
    ),
    "learning.curve": ("the loss, step by step", "损失，一步一步"),
    "learning.table": ("q and loss per image", "每张图像的 q 和损失"),
    "learning.state.untrained": ("untrained", "未训练"),
    "learning.state.after": (
        "after epoch {epoch} of {last}",
        "第 {epoch} 个迭代周期之后，共 {last} 个",
    ),
    "learning.summary": (
        "**Epoch {epoch}** ({state}, step {step}): **{right} of {n}** right; mean loss of the {n} "
        "images **{loss}** (ln {c} = {ln}: q = 1/{c} for every class, what an untrained model "
        "gives).",
        "**第 {epoch} 个迭代周期**（{state}，第 {step} 步）：**{n} 张中有 {right} 张**正确；"
        "这 {n} 张图像的平均损失为 **{loss}**（ln {c} = {ln}：每个类别的 q 都是 1/{c}，这是"
        "未训练模型给出的结果）。",
    ),
    "learning.column.image": ("image", "图像"),
    "learning.column.true": ("true class", "真实类别"),
    "learning.column.predicted": ("predicted", "预测"),
    "learning.column.q_predicted": ("q[predicted]", "q[预测]"),
    "learning.column.q_true": ("q[true class]", "q[真实类别]"),
    "learning.column.loss": ("loss", "损失"),
    "learning.caption": ("{true} → {predicted}, loss {loss}", "{true} → {predicted}，损失 {loss}"),
    "learning.series.train": ("train/loss (each step)", "train/loss（每一步）"),
    "learning.series.images": ("the 16 images' mean loss", "这 16 张图像的平均损失"),
    "learning.series.untrained": ("ln {c} (untrained)", "ln {c}（未训练）"),
    "learning.series.now": ("this epoch", "当前迭代周期"),
    "learning.axis.step": ("step", "步"),
    "learning.axis.loss": ("loss", "损失"),
    "learning.no_validation": (
        "This run has no validation split (data.val_size=0), so it followed no validation "
        "images: train with one (the default) to watch a model learn.",
        "这次训练没有验证集（data.val_size=0），所以没有跟踪任何验证图像：用验证集（默认设置）训练，"
        "就能看模型学习。",
    ),
    "learning.error.unknown": (
        "{name} is not one of the runs this page shows",
        "{name} 不是这个页面展示的训练运行",
    ),
    "learning.error.no_epoch": (
        "{run} has not finished an epoch yet: wait for one, then reload",
        "{run} 还没有完成一个迭代周期：请等它完成，再重新加载",
    ),
    "learning.error.gone": (
        "{run} no longer exists (deleted or moved since the page started): choose another run, or "
        "restart the page to list the runs there are now",
        "{run} 已不存在（页面启动后被删除或移动了）：请选择其他训练运行，或重启页面以列出"
        "现有的运行",
    ),
    "learning.error.old": (
        "{run} has no {file}: it was trained before fmnist kept one; train it again to watch it "
        "learn.",
        "{run} 没有 {file}：它是在 fmnist 开始保存这个文件之前训练的；请重新训练，才能看它学习。",
    ),
}
