"""Defaults of the built-in demo (shapes + the small default detector on a 2-core CPU)."""

DEMO = dict(
    task="detection",
    model="fasterrcnn_resnet18_fpn",
    n_train=300, n_val=100, image_size=128, seed=0,
    batch_size=4, lr=0.02, momentum=0.9, weight_decay=1e-4,
    warmup_iters=50, iters=300, lr_steps=(), gamma=0.1,
)
