"""Refit on confirmed shots: a fixed train/hold-out split, a capped support set, and the gate.

The rules that keep the registry honest live here, in plain Python, so the refit flow only
strings them together:

* **Split by content hash, once and for all** (``split.is_holdout``). An image's side depends
  only on the SHA-256 of its bytes, so it never changes between refits, whatever else was
  confirmed meanwhile: no model is judged on an image it trained on, as long as the hold-out
  fraction is not changed. As a second guard, ``split.exclude_trained`` drops hold-out images
  that a model's lineage says it trained on.
* **Support: newest first, capped per class** (``split.select_support``). Re-reviews are
  corrections and the fab drifts, so the latest confirmations are the most relevant shots.
* **Same images for both.** ``decode.load_holdout`` reads the hold-out once;
  ``evaluate.evaluate`` scores any model on it, candidate and champion alike.
* **Wafers stay whole** (``shots.wafer_group``): support shots carry their lot/wafer, parsed
  with SEMCLIP_PATH_REGEX, so the cross-validation that picks τ and α never tests on a wafer
  it also trained on.
* **The gate** (``gate.gate``): with no champion yet the candidate becomes champion. Else it
  says *insufficient* unless every class the candidate knows (good included) has
  ``min_holdout_per_class`` hold-out images, and it promotes only when the paired-bootstrap
  95 % lower bound of the macro-F1 gain reaches ``min_f1_gain`` and pixel F1-max (where
  hold-out masks exist) drops by no more than ``max_pixel_f1_drop``.

One module per step: ``shots`` (a confirmed shot, its content hash, its wafer), ``split``,
``decode`` (images and masks fetched and decoded once), ``evaluate`` (hold-out metrics of any
model), ``gate``, ``provenance`` (the git commit of the code). Bytes come through
:func:`semclip.io.fetch.fetch_bytes`, as in the nightly flow.
"""
