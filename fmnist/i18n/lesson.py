"""The lesson's words (scripts/explain.py, the lesson tab, the loss of one picture worked out as
fmnist.snapshot does it): key -> (English, Chinese). Spaces at the start of a line are the
layout of the printed text, kept in both."""

from __future__ import annotations

LESSON: dict[str, tuple[str, str]] = {
    # scripts/explain.py: from logits
    "explain.logits.head": (
        "Softmax + cross-entropy, step by step: {samples}, {classes} classes.",
        "Softmax + 交叉熵，一步一步来：{samples}，{classes} 个类别。",
    ),
    "explain.samples.one": ("1 sample", "1 个样本"),
    "explain.samples.many": ("{n} samples", "{n} 个样本"),
    "explain.logits.sample": (
        "Sample {i}: logits x = {logits}, target class {label}",
        "样本 {i}：logits x = {logits}，目标类别 {label}",
    ),
    "explain.logits.shift": (
        "  1. subtract the max ({max}) so that exp cannot overflow: x - max = {shifted}",
        "  1. 减去最大值（{max}），这样 exp 就不会溢出：x - max = {shifted}",
    ),
    "explain.logits.exp": (
        "  2. exponentiate: exp(x - max) = {exps}, sum = {total}",
        "  2. 取指数：exp(x - max) = {exps}，求和 = {total}",
    ),
    "explain.logits.divide": (
        "  3. divide by the sum: softmax q = exp(x - max) / sum",
        "  3. 除以总和：softmax q = exp(x - max) / sum",
    ),
    "explain.logits.loss": (
        "  5. loss = -sum_c p_c * log(q_c) = {expansion}",
        "  5. 损失 = -sum_c p_c * log(q_c) = {expansion}",
    ),
    "explain.logits.rounded": (
        "(Step 5 uses q rounded to 4 decimals, as on paper; the mean uses the exact q.)",
        "（第 5 步用的是保留 4 位小数的 q，和手算一样；平均值用的是精确的 q。）",
    ),
    "explain.logits.mean": (
        "Mean loss over {samples} (exact per-sample losses {exact}): {mean}",
        "{samples}的平均损失（每个样本的精确损失为 {exact}）：{mean}",
    ),
    "explain.logits.torch": (
        "PyTorch, torch.nn.CrossEntropyLoss()(logits, targets): {value}",
        "PyTorch 的 torch.nn.CrossEntropyLoss()(logits, targets)：{value}",
    ),
    # q and p
    "explain.q": ("     q = {q}", "     q = {q}"),
    "explain.p": ("  {step}one-hot target p = {p}", "  {step}独热目标 p = {p}"),
    "explain.table": (
        "  {step}q and the one-hot target p, per Fashion-MNIST class:",
        "  {step}每个 Fashion-MNIST 类别的 q 和独热目标 p：",
    ),
    "explain.target_mark": ("   <- target", "   <- 目标"),
    "explain.class_label": ("{k} ({name})", "{k}（{name}）"),
    # scripts/explain.py: from probabilities
    "explain.probs.head": (
        "Cross-entropy from probabilities: {samples}, {classes} classes.",
        "由概率计算交叉熵：{samples}，{classes} 个类别。",
    ),
    "explain.probs.sample": ("Sample {i}: target class {label}", "样本 {i}：目标类别 {label}"),
    "explain.probs.loss": (
        "  loss = -sum_c p_c * log(q_c) = {expansion}",
        "  损失 = -sum_c p_c * log(q_c) = {expansion}",
    ),
    "explain.probs.pick": (
        "       = -log(q[target]) = -log({q}) = {loss}",
        "       = -log(q[目标]) = -log({q}) = {loss}",
    ),
    "explain.probs.mean": (
        "Mean loss over {samples}: {mean}",
        "{samples}的平均损失：{mean}",
    ),
    "explain.probs.torch": (
        "PyTorch, torch.nn.NLLLoss()(log(q), target): {value}",
        "PyTorch 的 torch.nn.NLLLoss()(log(q), target)：{value}",
    ),
    # ours against PyTorch's (fmnist.explain.verdict)
    "explain.agree": ("They agree: {verdict}.", "两者一致吗：{verdict}。"),
    "explain.verdict.infinite": ("yes (both infinite)", "一致（都是无穷大）"),
    "explain.verdict.yes": ("yes (difference {difference})", "一致（相差 {difference}）"),
    "explain.verdict.no": ("NO (difference {difference})", "不一致（相差 {difference}）"),
    # scripts/explain.py and the lesson tab: mistakes in the input, one line each
    "explain.error.both": (
        "give either logits (with targets) or probs (with target), not both",
        "logits（配 targets）和 probs（配 target）只能给一个，不能都给",
    ),
    "explain.error.targets_twice": (
        "give the target classes once, as targets=... or target=..., not both",
        "目标类别只给一次：targets=... 或 target=...，不要都给",
    ),
    "explain.error.targets_alone": (
        "targets given without logits or probs: add logits=[...] or probs=[...]",
        "给了 targets 却没有 logits 或 probs：请加上 logits=[...] 或 probs=[...]",
    ),
    "explain.error.nothing": (
        "nothing to explain: give logits=[...] targets=... or probs=[...] target=...",
        "没有可讲解的内容：请给出 logits=[...] targets=... 或 probs=[...] target=...",
    ),
    "explain.error.no_targets": (
        "{name} given without {key}: add {key}=... (one class index per row)",
        "给了 {name} 却没有 {key}：请加上 {key}=...（每行一个类别索引）",
    ),
    "explain.error.not_a_list": (
        "{name} must be a list of numbers like [1,2,3], or a list of such rows",
        "{name} 必须是像 [1,2,3] 这样的数字列表，或由这样的行组成的列表",
    ),
    "explain.error.row": ("{name} row {i}", "{name} 第 {i} 行"),
    "explain.error.not_finite": (
        "{where} must hold finite numbers, got {bad}",
        "{where} 只能包含有限的数字，却收到了 {bad}",
    ),
    "explain.error.empty": ("{where} is empty", "{where} 是空的"),
    "explain.error.ragged": (
        "{name} row {i} has {count} but row 1 has {first}: every row needs one value per class",
        "{name} 第 {i} 行有 {count}，但第 1 行有 {first} 个：每行都要为每个类别给一个值",
    ),
    "explain.error.values.one": ("1 value", "1 个值"),
    "explain.error.values.many": ("{n} values", "{n} 个值"),
    "explain.error.classes": (
        "{name} need at least 2 classes per row, got {n}",
        "{name} 每行至少需要 2 个类别，却只有 {n} 个",
    ),
    "explain.error.whole": (
        "targets must be whole class indices like 0 or [1,2], got {t}",
        "targets 必须是整数类别索引，例如 0 或 [1,2]，却收到了 {t}",
    ),
    "explain.error.range": (
        "target {t} is out of range: with {c} classes, targets must be in [0, {last}]",
        "目标 {t} 超出范围：共有 {c} 个类别，目标必须在 [0, {last}] 之间",
    ),
    "explain.error.count": (
        "got {n} targets for {rows}: give one target per row",
        "为 {rows}给了 {n} 个目标：每行给一个目标",
    ),
    "explain.error.rows.one": ("1 row", "1 行"),
    "explain.error.rows.many": ("{n} rows", "{n} 行"),
    "explain.error.sample": ("sample {i}: {problem}", "样本 {i}：{problem}"),
    # fmnist.loss_checks: a row of probabilities that is not a distribution
    "probs.error.negative": (
        "{where} has a negative or nan entry: probabilities must be in [0, 1] (pass logits to "
        "cross_entropy instead)",
        "{where} 含有负数或 nan：概率必须在 [0, 1] 之间（否则请把 logits 交给 cross_entropy）",
    ),
    "probs.error.sum": (
        "{where} sums to {total}, not 1: probabilities must sum to 1 (pass logits to "
        "cross_entropy instead)",
        "{where} 的和是 {total}，不是 1：概率之和必须为 1（否则请把 logits 交给 cross_entropy）",
    ),
    # the lesson tab's summary and table (fmnist.app.lesson)
    "lesson.sample": (
        "**Sample {i}** (target {label}): loss = `{line}`  ",
        "**样本 {i}**（目标 {label}）：损失 = `{line}`  ",
    ),
    "lesson.rounded": (
        "(Each sample's value uses q rounded to 4 decimals, as on paper; the mean uses the exact "
        "q.)",
        "（每个样本的值用的是保留 4 位小数的 q，和手算一样；平均值用的是精确的 q。）",
    ),
    "lesson.mean": (
        "**Mean loss, ours** (`{call}`): **{mean}**  ",
        "**平均损失，我们的实现**（`{call}`）：**{mean}**  ",
    ),
    "lesson.torch": (
        "**PyTorch** (`{call}`): **{value}**, they agree: {verdict}.",
        "**PyTorch**（`{call}`）：**{value}**，两者一致吗：{verdict}。",
    ),
    "lesson.column.sample": ("sample", "样本"),
    "lesson.column.target": ("target", "目标"),
    "lesson.column.loss": ("loss (exact q)", "损失（精确的 q）"),
    "lesson.plot.sample": ("sample {i}", "样本 {i}"),
    "lesson.plot.curve": ("-log q", "-log q"),
    "lesson.plot.unsure": ("q = 1/{c} (unsure)", "q = 1/{c}（不确定）"),
    # one picture's loss worked out (fmnist.snapshot.report, the picture tab)
    "snapshot.source.probs": ("the given probabilities q", "给定的概率 q"),
    "snapshot.source.checkpoint": (
        "{model} from {path} (step {step})",
        "{path} 中的 {model}（第 {step} 步）",
    ),
    "snapshot.source.untrained": (
        "an untrained {model} (seed {seed})",
        "一个未训练的 {model}（随机种子 {seed}）",
    ),
    "snapshot.subject": ("{split} image #{index}", "{split} 集图像 #{index}"),
    "snapshot.head.probs": (
        "Cross-entropy of {source}, true class {target} ({name}).",
        "{source}的交叉熵，真实类别 {target}（{name}）。",
    ),
    "snapshot.head.model": (
        "Snapshot of {source}, in eval mode, on {subject}: true class {target} ({name}).",
        "{source}（评估模式）对 {subject} 的快照：真实类别 {target}（{name}）。",
    ),
    "snapshot.q.probs": ("q = the given probabilities", "q = 给定的概率"),
    "snapshot.q.model": (
        "q = the model's probabilities, softmax(logits)",
        "q = 模型给出的概率，softmax(logits)",
    ),
    "snapshot.p": ("{q_is}; p = the one-hot truth:", "{q_is}；p = 独热编码的真实标签："),
    "snapshot.column.class": ("class", "类别"),
    "snapshot.true_mark": ("   <- true class", "   <- 真实类别"),
    "snapshot.vanish": (
        "     = -log(q[{target}]) = -log({q})   (the p_c = 0 terms vanish)",
        "     = -log(q[{target}]) = -log({q})   （p_c = 0 的项都消失了）",
    ),
    "snapshot.loss": ("loss = -sum_c p_c * log(q_c)", "损失 = -sum_c p_c * log(q_c)"),
    "snapshot.ours": (
        "Our loss, fmnist.losses.{call}: {value}",
        "我们的损失 fmnist.losses.{call}：{value}",
    ),
    "snapshot.torch": ("PyTorch, {call}: {value}", "PyTorch 的 {call}：{value}"),
    "snapshot.rounded": (
        "(By hand uses q rounded to 4 decimals, as printed; the losses use exact q.)",
        "（手算用的是打印出来的 4 位小数的 q；两个损失用的是精确的 q。）",
    ),
    "snapshot.untrained": (
        "An untrained {c}-class model gives about ln {c} = {ln}: its q is close to 1/{c} for every "
        "class, and -log(1/{c}) = ln {c}.",
        "一个未训练的 {c} 类模型给出的损失约为 ln {c} = {ln}：它对每个类别的 q 都接近 1/{c}，而 "
        "-log(1/{c}) = ln {c}。",
    ),
    "snapshot.above": (
        "This loss, {loss}, is {distance} above it.",
        "这个损失 {loss} 比它高 {distance}。",
    ),
    "snapshot.below": (
        "This loss, {loss}, is {distance} below it.",
        "这个损失 {loss} 比它低 {distance}。",
    ),
    "snapshot.right": (
        "The top class is the true one, with q = {q}: the surer a right answer, the closer its "
        "loss is to 0.",
        "概率最高的类别就是真实类别，q = {q}：正确的答案越有把握，损失就越接近 0。",
    ),
    "snapshot.wrong": (
        "The top class is {top} (q = {q_top}), not {true} (q = {q_true}): the loss looks only at "
        "q[{target}], so a wrong answer costs more the surer it is (the less it leaves for the "
        "true class), and an unsure one (q near 1/{c} everywhere) about ln {c}.",
        "概率最高的类别是 {top}（q = {q_top}），而不是 {true}（q = {q_true}）：损失只看 "
        "q[{target}]，所以错误的答案越有把握（留给真实类别的概率越少），代价就越大；而不确定的答"
        "案（处处 q 接近 1/{c}）代价约为 ln {c}。",
    ),
}
