"""Generic optax trainer (``lax.scan`` over steps, ``vmap`` over tasks); fit / select / predict."""

from jaxclip_fs.train.fit import fit, fit_select_predict, init_params, train_params
from jaxclip_fs.train.trainer import TrainData, train

__all__ = ["TrainData", "fit", "fit_select_predict", "init_params", "train", "train_params"]
