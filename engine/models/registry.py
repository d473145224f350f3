"""Model manifest, fetch (mirror copy or download) and SHA-256 verification.

Weights never live in the repository: they are copied from a local mirror folder (what an
air-gapped site has; CI uses ../shared/models) or downloaded from the manifest URL, and every
file is checked against its manifest hash before it is stored or loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import ModelError, ModelHashMismatchError, ModelNotFoundError

if TYPE_CHECKING:
    from engine.config import ModelsConfig

log = logging.getLogger(__name__)

_MANIFEST_CANDIDATES = (
    Path(__file__).resolve().parents[2] / "models" / "manifest.json",  # source checkout / editable
    Path(__file__).resolve().parents[1] / "data" / "manifest.json",  # copied in at build time
)


LOCAL_MANIFEST = "manifest.local.json"  # in the model dir: extra models a site adds, same format


@dataclass(frozen=True)
class ModelSpec:
    """One manifest entry: where a model comes from and how to feed it."""

    name: str
    file: str
    task: str
    family: str
    sha256: str = ""
    size: int = 0
    url: str = ""
    archive_member: str = ""
    license: str = ""
    input_size: tuple[int, int] = (0, 0)
    color: str = "RGB"
    mean: float = 127.5
    std: float = 128.0
    dim: int = 0
    extra: dict[str, object] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, name: str, d: dict[str, object]) -> ModelSpec:
        known = {k for k in cls.__dataclass_fields__ if k not in ("name", "extra")}
        kw = {k: v for k, v in d.items() if k in known}
        if "input_size" in kw:
            kw["input_size"] = tuple(kw["input_size"])  # type: ignore[arg-type]
        return cls(name=name, extra={k: v for k, v in d.items() if k not in known}, **kw)  # type: ignore[arg-type]


def manifest_path() -> Path:
    env = os.environ.get("FACEENGINE_MANIFEST")
    if env:
        return Path(env)
    for cand in _MANIFEST_CANDIDATES:
        if cand.is_file():
            return cand
    raise ModelError("model manifest not found; set FACEENGINE_MANIFEST to models/manifest.json")


def load_manifest(path: Path | None = None) -> dict[str, ModelSpec]:
    with open(path or manifest_path(), encoding="utf-8") as fh:
        data = json.load(fh)
    return {name: ModelSpec.from_dict(name, d) for name, d in data["models"].items()}


def _checked_local(path: Path, extra: dict[str, ModelSpec], shipped: dict[str, ModelSpec],
                   allow_unverified: bool) -> dict[str, ModelSpec]:
    """The local manifest's entries, refusing any that redefines a shipped model or has no valid
    sha256: a file dropped next to the weights must not silently replace a verified model."""
    problems = []
    for name, spec in extra.items():
        if name in shipped or any(s.file == spec.file for s in shipped.values()):
            problems.append(f"{name!r} redefines a shipped model (name or file {spec.file!r})")
        elif len(spec.sha256) != 64 or any(c not in "0123456789abcdef" for c in spec.sha256.lower()):
            problems.append(f"{name!r} has no valid sha256 (64 hex digits)")
    if not problems:
        return extra
    if not allow_unverified:
        raise ModelError(f"{path}: {'; '.join(problems)}. Refused: give each new model its own name and its "
                         "sha256, or set models.allow_unverified_local = true to accept it unverified (unsafe)")
    log.warning("%s: %s; accepted UNVERIFIED because models.allow_unverified_local is set", path, "; ".join(problems))
    return extra


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


class ModelRegistry:
    """Resolves manifest names to verified files in one model directory."""

    def __init__(self, model_dir: str | os.PathLike[str], mirror: str | os.PathLike[str] | None = None,
                 verify_hash: bool = True, manifest: dict[str, ModelSpec] | None = None,
                 allow_unverified_local: bool = False) -> None:
        self.model_dir = Path(model_dir).expanduser()
        self.mirror = Path(mirror).expanduser() if mirror else None
        self.verify_hash = verify_hash
        self.specs = manifest if manifest is not None else load_manifest()
        local = self.model_dir / LOCAL_MANIFEST
        if manifest is None and local.is_file():  # a site's own models, with their own hashes
            try:
                extra = load_manifest(local)
            except (ValueError, KeyError, TypeError) as exc:
                raise ModelError(f"{local} is not a valid manifest: {exc}") from exc
            self.specs.update(_checked_local(local, extra, self.specs, allow_unverified_local))
        self._verified: dict[Path, tuple[int, float]] = {}

    @classmethod
    def from_config(cls, models: ModelsConfig) -> ModelRegistry:
        """The registry the `[models]` section describes: its folder, mirror, hash checks and local manifest rule."""
        return cls(models.dir, models.mirror or None, models.verify_hash,
                   allow_unverified_local=models.allow_unverified_local)

    def spec(self, name: str) -> ModelSpec:
        """The manifest entry for `name`, or an ad-hoc spec for an .onnx file in the model dir."""
        if name in self.specs:
            return self.specs[name]
        for spec in self.specs.values():
            if spec.file == name:
                return spec
        raise ModelNotFoundError(
            f"unknown model {name!r}; known: {', '.join(sorted(self.specs))} (to use another file, describe it "
            f"with its sha256 in {self.model_dir / LOCAL_MANIFEST}, same format as models/manifest.json)"
        )

    def status(self, name: str) -> str:
        """'ok', 'missing' or 'bad-hash' for a manifest model."""
        spec = self.spec(name)
        path = self.model_dir / spec.file
        if not path.is_file():
            return "missing"
        if spec.sha256 and sha256_file(path) != spec.sha256:
            return "bad-hash"
        return "ok"

    def path(self, name: str) -> Path:
        """Path to a verified model file; copies it from the mirror first if configured."""
        spec = self.spec(name)
        path = self.model_dir / spec.file
        if not path.is_file():
            if self.mirror is not None and (self.mirror / spec.file).is_file():
                self.fetch([name], mirror=self.mirror)
            else:
                raise ModelNotFoundError(
                    f"model file {spec.file} ({name}) not found in {self.model_dir}; run "
                    f"`faceengine models fetch {name} --mirror DIR` (copy from a local mirror) or "
                    f"`faceengine models fetch {name}` (download), or set FACEENGINE_MODEL_DIR"
                )
        if self.verify_hash:
            self._check(path, spec)
        return path

    def _check(self, path: Path, spec: ModelSpec) -> None:
        st = path.stat()
        if self._verified.get(path) == (st.st_size, st.st_mtime):
            return
        if not spec.sha256:
            log.warning("model %s has no sha256 in the manifest: loading it unverified", path)
            return
        digest = sha256_file(path)
        if digest != spec.sha256:
            raise ModelHashMismatchError(
                f"model file {path} has sha256 {digest}, expected {spec.sha256} ({spec.name}); "
                f"it is corrupt or a different model: delete it and run `faceengine models fetch {spec.name}`"
            )
        self._verified[path] = (st.st_size, st.st_mtime)

    def fetch(self, names: Iterable[str] | None = None, mirror: str | os.PathLike[str] | None = None,
              progress: Callable[[str], None] | None = None, force: bool = False) -> list[Path]:
        """Copy (from `mirror`) or download each model, verify its hash, store it atomically.

        Without names, fetches every model the mirror holds (or, with no mirror, those with a URL
        that are not yet present)."""
        mirror_dir = Path(mirror).expanduser() if mirror else self.mirror
        if names is None:
            if mirror_dir is not None:
                names = [n for n, s in self.specs.items() if (mirror_dir / s.file).is_file()]
            else:
                names = [n for n, s in self.specs.items() if s.url]
        self.model_dir.mkdir(parents=True, exist_ok=True)
        out = []
        for name in names:
            spec = self.spec(name)
            dest = self.model_dir / spec.file
            if dest.is_file() and not force and (not spec.sha256 or sha256_file(dest) == spec.sha256):
                if progress:
                    progress(f"{name}: already present and verified ({dest})")
                out.append(dest)
                continue
            fd, tmp_name = tempfile.mkstemp(prefix=f".{spec.file}.", dir=self.model_dir)
            os.close(fd)
            tmp = Path(tmp_name)
            try:
                if mirror_dir is not None:
                    src = mirror_dir / spec.file
                    if not src.is_file():
                        raise ModelNotFoundError(f"model file {spec.file} ({name}) not found in mirror {mirror_dir}")
                    if progress:
                        progress(f"{name}: copying {src}")
                    shutil.copyfile(src, tmp)
                else:
                    if not spec.url:
                        raise ModelNotFoundError(
                            f"model {name} has no download URL; copy {spec.file} into {self.model_dir} "
                            "or fetch it with --mirror DIR"
                        )
                    if progress:
                        progress(f"{name}: downloading {spec.url}")
                    _download(spec, tmp)
                digest = sha256_file(tmp)
                if spec.sha256 and digest != spec.sha256:
                    raise ModelHashMismatchError(
                        f"{name}: fetched file has sha256 {digest}, expected {spec.sha256}; not installed "
                        "(the mirror or download is corrupt or holds another version)"
                    )
                with open(tmp, "rb") as fh:
                    os.fsync(fh.fileno())
                os.replace(tmp, dest)
                if progress:
                    progress(f"{name}: ok -> {dest}")
                out.append(dest)
            finally:
                tmp.unlink(missing_ok=True)
        return out


def _download(spec: ModelSpec, dest: Path) -> None:
    """Download the URL (extracting `archive_member` from a zip) into dest."""
    try:
        if spec.archive_member:
            with tempfile.TemporaryFile() as buf:
                with urllib.request.urlopen(spec.url, timeout=60) as resp:  # noqa: S310
                    shutil.copyfileobj(resp, buf)
                buf.seek(0)
                with zipfile.ZipFile(buf) as zf:
                    members = [m for m in zf.namelist() if m.rsplit("/", 1)[-1] == spec.archive_member]
                    if not members:
                        raise ModelError(f"{spec.url} holds no {spec.archive_member}")
                    with zf.open(members[0]) as src, open(dest, "wb") as out:
                        shutil.copyfileobj(src, out)
        else:
            with urllib.request.urlopen(spec.url, timeout=60) as resp, open(dest, "wb") as out:  # noqa: S310
                shutil.copyfileobj(resp, out)
    except OSError as exc:
        raise ModelError(f"download of {spec.name} from {spec.url} failed: {exc}; "
                         "on an offline machine use `faceengine models fetch --mirror DIR`") from exc
