"""How results are shown and kept: TensorBoard events (`board`), what a training run reports as it
goes (`training`: events, tqdm bars, train.log), matplotlib figures (`figures`) and text reports
(`text`). The code that computes results (engine, evaluate, snapshot) knows nothing of these."""
