"""Generic optax trainer (``lax.scan`` over steps, ``vmap`` over tasks); fit / select."""

from jaxclip_fs.train.fit import fit, init_params, select, train_params
from jaxclip_fs.train.trainer import TrainData, train

__all__ = ["TrainData", "fit", "init_params", "select", "train", "train_params"]
