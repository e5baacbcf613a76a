"""Learn2PD: a learned unmasking filter, trained for any model from its own decodes (spec LF §1).

* :mod:`.prompts`   training prompts: an embedded task set's training split, or a user file
* :mod:`.labels`    the EGP oracle labeller (a sampler run through ``dllm.generate``)
* :mod:`.traces`    static decode -> EGP decode -> records (block confidences, labels), batched
* :mod:`.features`  the filter input, shared by training and the ``learn2pd`` sampler; model fingerprints
* :mod:`.network`   the B -> 32 -> B MLP
* :mod:`.training`  split by prompt, full-batch AdamW, early stopping on validation loss
* :mod:`.artifact`  ``filter.safetensors`` + ``filter.json``: atomic writes, checked loads
* :mod:`.pipeline`  :func:`train_filter`, the whole recipe in one call
* :mod:`.cli`       ``dllm train-filter`` (:func:`train_filter_main`)

The sampler is ``dllm.samplers.learn2pd`` (``sampler="learn2pd"``); End-of-Text prediction is the filter
``dllm.filters.eotp`` (``eotp="committed"`` / ``"predicted"`` / ``"fill"``).
"""

from .artifact import FilterError, load_filter


def train_filter(*args, **kwargs):
    """See :func:`dllm.learn2pd.pipeline.train_filter`."""
    from .pipeline import train_filter as run

    return run(*args, **kwargs)


__all__ = ["FilterError", "load_filter", "train_filter"]
