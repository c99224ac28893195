"""Text reports: an evaluation as the tables a person reads (accuracy, both losses, per-class
precision / recall / F1, the confusion matrix, the most confused pairs), and predictions on
pictures (top classes and doubts, a line each)."""

from __future__ import annotations

import textwrap
from typing import Any


def evaluation(r: dict[str, Any]) -> str:
    """The results of `fmnist.evaluate` (eval.json's dict) as text."""
    mode = ("bf16 autocast" if r["precision"] == "bf16" else "float32") + (
        "" if r["tta"] == "none" else f", TTA {r['tta']}"
    )
    same_tta = r["tta"] == r["run_tta"]
    lines = [
        f"Checkpoint: {r['ckpt_path']}",
        f"  {r['model']}, epoch {r['epoch']}, step {r['step']}; evaluated on {r['device']} in "
        f"{mode}" + (", as its run did" if same_tta else f" (its run used TTA {r['run_tta']})"),
        f"Split: {r['split']}, {r['num_samples']} images",
        "",
        f"Accuracy: {r['accuracy']:.4f} ({r['correct']} / {r['num_samples']})",
        "Mean cross-entropy:",
        f"  ours, fmnist.losses.cross_entropy:  {r['loss']:.6f}",
        f"  PyTorch, nn.CrossEntropyLoss:       {r['loss_torch']:.6f}",
        f"  They agree: {'yes' if r['losses_agree'] else 'NO'} "
        f"(difference {r['loss_difference']:.1e}).",
    ]
    recorded = r["recorded_accuracy"]
    if recorded is None:
        lines.append(f"(The checkpoint records no {r['split']} accuracy to compare with.)")
    elif not same_tta:
        lines.append(
            f"Training recorded {r['split']}_acc {recorded:.4f} with TTA {r['run_tta']}: not "
            f"comparable with TTA {r['tta']}."
        )
    else:
        verdict = "reproduced exactly" if r["reproduces_recorded_accuracy"] else "DIFFERS"
        lines.append(f"Training recorded {r['split']}_acc {recorded:.4f}: {verdict}.")
    flag = r["ood"]
    lines.append(
        f"The model's own flag (energy above {flag['threshold']:.2f}) marks {flag['flagged']:.1%} "
        "of these images as unlike its training images."
        if flag["threshold"] is not None
        else flag["rule"]
    )
    return "\n".join([*lines, *_per_class(r), *_confusion(r), *_most_confused(r)])


def _per_class(r: dict[str, Any]) -> list[str]:
    width = max(len(name) for name in r["classes"]) + 2
    lines = ["", "Per class:", f"  {'class':<{width + 2}} precision  recall      F1  support"]
    for row in r["per_class"]:
        lines.append(
            f"  {row['class']} {row['name']:<{width}} {row['precision']:9.4f} "
            f"{row['recall']:7.4f} {row['f1']:7.4f} {row['support']:8d}"
        )
    macro = {
        k: sum(row[k] for row in r["per_class"]) / len(r["per_class"])
        for k in ("precision", "recall", "f1")
    }
    lines.append(
        f"  {'macro average':<{width + 2}} {macro['precision']:9.4f} {macro['recall']:7.4f} "
        f"{macro['f1']:7.4f} {r['num_samples']:8d}"
    )
    return lines


def _confusion(r: dict[str, Any]) -> list[str]:
    width = max(len(name) for name in r["classes"]) + 2
    cell = max(5, len(str(max(max(row) for row in r["confusion"]))) + 1)
    header = "".join(f"{k:>{cell}}" for k in range(len(r["classes"])))
    lines = [
        "",
        "Confusion matrix (rows: true class, columns: predicted class, numbered as the rows):",
        f"  {'':<{width + 2}}{header}",
    ]
    for k, (name, row) in enumerate(zip(r["classes"], r["confusion"], strict=True)):
        lines.append(f"  {k} {name:<{width}}" + "".join(f"{v:>{cell}}" for v in row))
    return lines


def _most_confused(r: dict[str, Any]) -> list[str]:
    lines = ["", "Most confused (true -> predicted):"]
    for pair in r["most_confused"]:
        lines.append(
            f"  {pair['true_name']} -> {pair['predicted_name']}: {pair['count']} "
            f"({pair['share_of_true']:.1%} of {pair['true_name']})"
        )
    if not r["most_confused"]:
        lines.append("  none: every image is classified correctly")
    return lines


def predictions(r: dict[str, Any], notes: list[str]) -> str:
    """The results of `fmnist.predict` (predictions.json's dict): a line per picture with its top
    classes, and its doubts after a `!`."""
    prepare = r["prepare"]
    rows = r["predictions"]
    width = max(len(p["file"]) for p in rows) + 2
    cell = max(len(name) for name in r["classes"]) + 8
    ranks = ("1st", "2nd", "3rd")[: len(rows[0]["top"])]
    lines = [
        f"Model: {r['description']}",
        f"Pictures prepared with invert={prepare['invert']}, crop={str(prepare['crop']).lower()} "
        "(fmnist/prepare/); ! marks a prediction not to trust:",
        textwrap.fill(r["doubt_rule"], 100, initial_indent="  ", subsequent_indent="  "),
        textwrap.fill(r["ood"]["rule"], 100, initial_indent="  ", subsequent_indent="  "),
        "",
        (f"{'file':<{width}}" + "".join(f"{rank:<{cell}}" for rank in ranks)).rstrip(),
    ]
    for p in rows:
        top = "".join(
            f"{t['name'] + ' ' + format(t['probability'], '.3f'):<{cell}}" for t in p["top"]
        )
        doubt = f"! {'; '.join(p['doubts'])}" if p["doubts"] else ""
        lines.append(f"{p['file']:<{width}}{top}{doubt}".rstrip())
    return "\n".join([*lines, *notes])
