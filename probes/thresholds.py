"""Every threshold of the diagnosis, each with where it comes from.

Where one comes from the literature it says so. The others are ours, set on the calibration
corpus (``python bench/diagnosis.py``: 20 faulty and 13 healthy setups, 3 seeds each, results in
bench/diagnosis.json, ``margins``) and on the four questions' runs; next to each constant are the
measured values on either side ("healthy max ..., faulty min ..."), so that a change of threshold
can be judged by its margin. "Corpus" below means bench/diagnosis.json of 2 CPU threads, torch
2.13; "question" runs are train.py's defaults unless said otherwise.
"""

# -- gradient flow -------------------------------------------------------------------------
# AUTOTRAINER (Zhang et al., ICSE 2021) flags vanishing gradients when the gradient norm of the
# first layer is below 1e-3 of the last layer's and below 1e-4 in absolute terms (here: only where
# the per-element ratio below agrees).
AUTOTRAINER_VANISH_RATIO = 1e-3
AUTOTRAINER_VANISH_FIRST_NORM = 1e-4
# Ours: first-to-last ratio of the per-element (RMS) gradient, ||g|| / sqrt(numel), median over
# logged steps. Whole-tensor norms grow with the square root of a layer's size and made a healthy
# MNIST Net (conv1 288 weights, fc2 1,280) look vanishing; per element they do not.
# Corpus: healthy min 0.026 (a ReLU MLP on [0, 1] pixels), MNIST Net 0.20-0.30, faulty max 8.5e-7
# (8 sigmoid layers). Questions: deep-sigmoid 0.0045 (600 steps) and 0.00091 (20 steps), deep-relu
# whole-norm 1.3-2.8, i.e. 0.10-0.22 per element.
VANISH_RMS_RATIO = 0.01
# Ours, for runs with WeightChange: mean |dW| first/last below 0.05.
# Measured: deep-sigmoid 0.0018 (20 steps) and 0.015 (600 steps); deep-relu 0.090 and 0.157.
# Corpus: healthy min 0.27, faulty max 5.9e-7.
VANISH_DW_RATIO = 0.05
# Ours: the total gradient norm growing 100x (two orders of magnitude) above its first
# logged value. Measured (largest later total norm / first): cnn 0.14 (896 steps), deep-sigmoid
# 0.32, deep-relu 2.1 (600 steps), dense-mlp 2.4 (469), scaled-conv 0.35 and 0.65 (200).
# Corpus: healthy max 10.4.
EXPLODING_GROWTH = 100.0
# Ours: a gradient (of one weight matrix, at one step) this many times the norm of the weights it
# moves, ||grad|| / ||W|| (probes.UpdateRatio keeps the largest of the run): scale-free, unlike an
# absolute gradient norm. Corpus: healthy max 4.9 (MNIST Net's fc2, batch 16), faulty min 2,800
# (9 ReLU layers initialised 3x too large); Adam at lr 0.1 reaches 180-235, SGD at lr 50 overflows.
EXPLODING_RELATIVE_GRAD = 100.0

# -- units ---------------------------------------------------------------------------------
# Ours: a layer whose ReLU units never fired is a warning from 10% of its units on; a few dead
# units are common and harmless (deep-relu, 20 steps: 0, 2 of 750 and 5 of 500 units).
# Corpus: healthy max 1.6%, faulty (a bias of -10) 100%.
DEAD_RELU_WARN_FRACTION = 0.1
# Ours: a unit "died during training" when it fired in at least ACTIVE_BEFORE of the logging
# intervals (every training example between two logs) before it fell silent, of at least
# ACTIVE_LOGS of them, and in none since, the recent window's included; a unit that fired in few
# intervals may just be sparse. A layer with DIED_RELU_WARN_FRACTION of its units died is a
# warning. Corpus: healthy max 1.6%, faulty min 42% (5 steps of Adam at 300x its learning rate);
# question deep-relu (600 steps): 8.6% of its first layer (info).
ACTIVE_BEFORE = 0.9
ACTIVE_LOGS = 3
DIED_RELU_WARN_FRACTION = 0.25
# Ours: a layer with this share of its units dead (since attach, or on the recent window) is a
# dead layer: the weights below it get no gradient through it (the link to vanishing-gradient).
DEAD_LAYER_FRACTION = 0.9
# Ours: half the outputs of a hidden sigmoid/tanh layer within 1e-3 of its bounds (probes/stats.py
# SATURATION_TOL), median over logged steps. Corpus: healthy max 0.0 (a Glorot tanh MLP), faulty
# min 0.69 (tanh and a user's own sigmoid, weights 10-20x too large). Output layers are left out:
# a confident classifier's sigmoid is saturated by design.
SATURATION_WARN_FRACTION = 0.5

# -- loss curve ----------------------------------------------------------------------------
# Ours: at least this many logged windows before the loss curve is judged at all, and the curve
# judged on at most LOSS_POINTS points (consecutive windows merged: one logged step's loss is noisy).
LOSS_MIN_WINDOWS = 5
LOSS_POINTS = 20
# Ours: the mean loss of the last fifth of the points fell by less than this fraction of the first
# fifth's. Corpus: healthy min 0.46 (a ResNet, 40 steps), faulty max 0.0003 (SGD at lr 1e-6).
NOT_DECREASING_FRACTION = 0.1
# Ours: within this relative distance of ln(units) the loss is "at chance level".
CHANCE_TOLERANCE = 0.05
# Ours: the largest rise of the loss curve above its lowest point so far, relative to the first
# logged loss. Corpus: healthy max 0.069, faulty min 1.13 (SGD with momentum at 3x the stable lr).
UNSTABLE_RISE = 0.25

# -- data and output -----------------------------------------------------------------------
# Ours: inputs with an RMS above this (or below INPUT_RMS_MIN) are far from unit scale.
# Corpus: healthy 0.33 ([0, 1] pixels) to 1.02, faulty 84.5 (raw 0-255 pixels); no corpus setup
# below 0.33, so INPUT_RMS_MIN is a judgement: 1e-3 is 300x below any healthy input seen.
INPUT_RMS_MAX = 10.0
INPUT_RMS_MIN = 1e-3
# Ours: this share of the input's features constant over each logged batch. Corpus: healthy max
# 0.48 (MNIST's blank borders at batch 16), faulty 0.97 (62 of 64 columns imputed to one value).
CONSTANT_INPUT_FRACTION = 0.8
# Ours: an output form or gradient shape holds "throughout" above this share of rows (and logs).
# Corpus: every faulty setup has its form in 100% of rows; healthy nets 0% or 100% (a softmax
# output under a probability loss, correctly).
FORM_FRACTION = 0.99
# Ours: a gradient at the output whose rows sum to zero within this (relative to their size)
# comes from a loss that expects logits (shift-invariant). Corpus: logits losses 3.5e-8 to 5.5e-8
# (rounding), probability and log-probability losses 1.0.
LOGIT_ROW_SUM = 1e-3
# Ours: the cosine of the output gradient with a loss's own gradient shape at which the loss is
# taken to be that one (and the better of the two fits). Corpus: each loss fits its own shape at
# 1.000; the other shape at most 0.975 (MSE's gradient against softmax(o) - y).
LOSS_FIT = 0.99

# -- layers against each other ---------------------------------------------------------------
# Ours: ||update||/||weight|| (mean update norm over mean weight norm) of two layers, or of one
# layer in two parameterisations of the same function, apart by 30x or more. Embedding weights
# are left out (see probes/rules/updates.py). Corpus: healthy max 10.7 (a ResNet at batch 128;
# MNIST Net 8.4, transformer 8.9), faulty 157 (one layer 100x larger). Question scaled-conv after
# 15 steps: variant 1's conv2 0.024 vs variant 2's 0.00012 (197x); within variant 2, conv1 0.0091
# vs conv2 0.00012 (75x); within variant 1, 1.02x.
UPDATE_RATIO_SPREAD = 30.0
