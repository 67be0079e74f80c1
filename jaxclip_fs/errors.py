"""User-facing errors.

Every error a user can cause (bad file, bad key, bad argument, missing
weights) is raised as a :class:`JaxclipError` subclass whose message is a
single line naming the file, key or argument. The CLI prints it as
``error: <message>`` and exits with status 2, never with a traceback.
"""


class JaxclipError(Exception):
    """Base class: a one-line, user-facing message."""


class FeatureFileError(JaxclipError):
    """A feature file (.npz) is missing a key or has a bad shape/dtype/value."""


class CheckpointError(JaxclipError):
    """A checkpoint cannot be found, read, or does not match the variant."""


class DataError(JaxclipError):
    """A dataset, split file, image or few-shot request is unusable."""


class ConfigError(JaxclipError):
    """A bad method name, hyperparameter name/value or CLI argument."""


class ProgramHang(JaxclipError):
    """A compiled program did not finish within the limits of :mod:`jaxclip_fs.engine.watchdog`.

    Its thread cannot be stopped: the CLI prints the message and exits at once
    with status 3 (``os._exit``), as a normal exit could wait on it forever.
    """


class OutputError(JaxclipError):
    """An output path cannot be written (a file where a directory goes, no permission, no
    space). Raised before any work when the path is checked up front
    (:func:`jaxclip_fs.io.outputs.check_output_dir`); raised after the work only with the
    unwritten results printed on stdout first."""


class NumericError(JaxclipError):
    """A computation gave NaN or Inf where a result was due (names the cell): such a number is
    never reported or recorded."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (and kin) received: unwinds like Ctrl-C; ``signum`` says which signal (the
    exit status is 128 + signum: 143 for SIGTERM)."""

    def __init__(self, signum: int = 15):
        super().__init__(signum)
        self.signum = signum
