"""Defaults of the built-in demo: `shapes` + the small default detector on a 2-core CPU.

Measured (tools/calibrate_detection_imp.py, 2026-11-26, torch 2.14.1, shared 2-core build
machine, load average 5-8, torch.set_num_threads(1)); the dense model learns the task:

  round  sparsity(paper)  train iters   CPU s/iter  wall s/iter  bbox AP  AP50  AP75  APs   APm
  0      0%               300 (0->300)  0.465       1.04         38.0     86.2  26.8  34.9  48.8
  1      50%              250 (50->300) 0.434       0.91         44.0     89.2  31.4  39.8  55.6
  2      75%              250 (50->300) 0.470       1.11         22.6     58.8  12.8  17.9  35.0

(96 px images have no COCO-"large" object, so APl is NaN.) Evaluation of the 100 val images
takes ~2.5 CPU s; generating the dataset ~2 s. A shorter schedule (iters 200, rewind 40,
step at 170: 520 iterations, 8.5 min wall at load ~5) learnt much less: AP 21.5 / 30.5 / 5.9.
Without the lr step (constant 0.02) the dense model reached AP 25.8 / AP50 72.2 after 300
iterations at 96 px, and AP 29.4 / AP50 74.2 at 128 px (slower early: 17.3 vs 19.4 after 200;
APl defined), for ~15-20% more time per iteration (0.54 CPU s). Full numbers:
bench/results/detection_demo_calibration.json.

One IMP run costs about (iters + rounds * (iters - rewind)) * s/iter + (rounds + 1) * eval:
with the values below (300 + 2 * 250 = 800 iterations) ~6.2 min of one CPU core; with two
unloaded cores and 2 threads it is faster. On an oversubscribed machine torch's OpenMP
threads spin-wait: 2 threads measured 16.8 s/iter (vs 2.1 s with 1 thread); set
OMP_WAIT_POLICY=PASSIVE before torch is imported (1.7 s/iter) or use 1 thread.
"""

DEMO = dict(
    task="detection",
    model="fasterrcnn_resnet18_fpn",
    data="shapes",
    n_train=300, n_val=100, image_size=96, seed=0,
    batch_size=4, lr=0.02, momentum=0.9, weight_decay=1e-4,
    warmup_iters=50, iters=300, lr_steps=(250,), gamma=0.1,
    rounds=2, rate=0.5, rewind="iter:50", scope="paper",
    eval_batch_size=8,
)
