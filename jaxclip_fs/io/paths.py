"""Names that become path components, and writes that stay inside their directory.

Dataset names, method variant labels, protocols and the names read from
feature files and records become path components (``DIR/records/<protocol>/
<method>/<dataset>/...``, ``report/accuracy_vs_shots_<dataset>.png``). They
may hold anything -- ``folder:/data/x/ok``, ``../../tmp/x``, a NUL byte -- so
:func:`safe_name` maps every string to **one** safe component, **distinct
strings to distinct components**:

* *ordinary* names keep the spelling of earlier versions, so existing run
  directories resume: a plain name of letters, digits, ``_`` and ``.`` (not
  starting with ``.``) is itself (``digits``, ``oxford_pets``); a variant
  label ``NAME[K=V,K=V]`` of such tokens becomes ``NAME--K-V--K-V``
  (``ldc[fusion=concat]`` -> ``ldc--fusion-concat``; brackets are avoided
  because checkpoint stores reject them). These outputs hold no ``%``;
* every other name is percent-escaped: letters, digits, ``_`` and a ``.``
  that is not the first character stay, every other character becomes
  ``%XX`` per UTF-8 byte (``folder:/d/x_ok`` -> ``folder%3A%2Fd%2Fx_ok``).
  Such outputs always hold a ``%``, so they never meet an ordinary one;
* a result longer than :data:`MAX_COMPONENT` characters is cut and ends in
  ``~`` and 16 hex digits of the name's sha256 (``~`` occurs in no uncut
  output).

:func:`inside` joins components under a root and checks -- after resolving
``..`` and symbolic links -- that the result lies inside it.
"""

from __future__ import annotations

import hashlib
import os
import re

from jaxclip_fs.errors import OutputError

#: Longest component :func:`safe_name` returns (file systems allow 255 bytes; suffixes follow).
MAX_COMPONENT = 160
_TOKEN = r"[A-Za-z0-9_][A-Za-z0-9_.]*"
_PLAIN = re.compile(_TOKEN + r"\Z")
_LABEL = re.compile(rf"({_TOKEN})\[({_TOKEN}={_TOKEN}(?:,{_TOKEN}={_TOKEN})*)\]\Z")
_KEPT = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.")


def _escaped(name: str) -> str:
    out = []
    for i, char in enumerate(name):
        if char in _KEPT and not (i == 0 and char == "."):
            out.append(char)
        else:
            out.extend(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))
    return "".join(out) or "%"


def safe_name(name: str) -> str:
    """The path component of ``name``: safe, and injective (module docstring).

    ``digits`` -> ``digits``; ``ldc[ablation=maf_only,fusion=concat]`` ->
    ``ldc--ablation-maf_only--fusion-concat``; ``folder:/a/b`` -> ``folder%3A%2Fa%2Fb``;
    ``..`` -> ``%2E.``.
    """
    name = str(name)
    label = _LABEL.match(name)
    if _PLAIN.match(name):
        out = name
    elif label:
        options = [pair.replace("=", "-") for pair in label.group(2).split(",")]
        out = "--".join([label.group(1), *options])
    else:
        out = _escaped(name)
    if len(out) > MAX_COMPONENT:
        digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        out = out[:MAX_COMPONENT - 17] + "~" + digest
    return out


def is_inside(root: str | os.PathLike, path: str | os.PathLike) -> bool:
    """Does ``path`` resolve (``..`` and symbolic links followed) to ``root`` or below it?"""
    base = os.path.realpath(root)
    target = os.path.realpath(path)
    return target == base or target.startswith(base.rstrip(os.sep) + os.sep)


def inside(root: str | os.PathLike, *parts: str) -> str:
    """``os.path.join(root, *parts)``, checked to resolve inside ``root``.

    The parts are expected to be safe already (:func:`safe_name`, fixed names);
    the check makes a write outside the directory impossible, not merely unlikely.

    Raises:
      OutputError: the joined path leaves ``root`` (names both).
    """
    root = os.fspath(root)
    path = os.path.join(root, *parts)
    if any("\x00" in part for part in parts) or not is_inside(root, path):
        raise OutputError(f"{path!r}: refusing to write outside {root}")
    return path


_CONTROL = {i: f"\\x{i:02x}" for i in (*range(32), 127)}


def printable(text: str) -> str:
    """``text`` that can be printed, written as UTF-8 and put in one table cell or CSV field:
    a name read from a file (JSON allows lone surrogates such as ``\\ud800``, and line
    breaks) has such characters spelled as escapes (``\\ud800``, ``\\x0a``), and a
    backslash doubled, so distinct names stay distinct."""
    text = str(text).replace("\\", "\\\\")
    return text.encode("utf-8", "backslashreplace").decode("utf-8").translate(_CONTROL)
