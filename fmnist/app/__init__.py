"""The lesson as a web page: `python scripts/app.py` (configs/app.yaml) serves it with Gradio.

Three tabs, each computed by the same functions as the commands (docs/app.md):

- `lesson`: "Cross-entropy by hand", softmax and the loss of a table of logits or of given
  probabilities (fmnist.explain, fmnist.losses), beside PyTorch's;
- `picture`: "Your picture", a picture read, prepared and predicted as `predict.py` does it
  (fmnist.predict, fmnist.prepare), with the loss against a chosen true class (fmnist.snapshot);
- `learning`: "Watch it learn", a run's fixed validation images epoch by epoch
  (fmnist.report.val_predictions) beside its train/loss curve.

`page` lays them out and names the API endpoints; `server` starts it. Only `page` and `server`
import Gradio (the `app` extra), and only once the command line has been checked.
"""
