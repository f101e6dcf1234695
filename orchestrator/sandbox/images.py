"""Sandbox images: where their build contexts are, their content-hash tags, building them.

Offline first: the base is ``debian:bookworm-slim`` when present or pullable; when no registry
answers, a Debian base is bootstrapped with ``debootstrap`` and imported (``docker import``).
Language images are tagged ``<prefix>-<name>:<hash of the build context>`` and rebuilt only when
their context changes. Each build gets the host's CA bundle as ``oi-build-ca.crt`` in its
context (empty when there is none; not part of the hash), so a Dockerfile that installs from
the package index works behind a TLS-intercepting proxy (``sandbox-images/full``).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import docker
import docker.errors

from orchestrator.errors import ImageBuildError, ImageMissingError
from orchestrator.languages import LANGUAGES, Language
from orchestrator.sandbox.ca import find_ca_bundle
from orchestrator.sandbox.docker import engine_errors
from orchestrator.sandbox.toolbox import FULL_IMAGE, Toolbox, image_for

Progress = Callable[[str], None]
BOOTSTRAP_BASE = "oi-base:bookworm"
LANGUAGE_IMAGES = tuple(info.image for info in LANGUAGES.values())
PROXY_IMAGE = "proxy"
ALL_IMAGES = (*LANGUAGE_IMAGES, FULL_IMAGE, PROXY_IMAGE)
PARENTS: dict[str, str] = {"shell": "python", FULL_IMAGE: "shell"}
"""Images built on another sandbox image (its tag is their ``BASE``): the shell sandbox is the
python one plus Node and the command-line tools, so a shell block can run the same Python; the
full toolbox is the shell one plus a browser and media tools."""
BUILD_CA_NAME = "oi-build-ca.crt"
"""The host CA bundle's name in every build context (see the module docstring)."""


def _quiet(_: str) -> None:
    pass


def context_root() -> Path:
    """The folder holding one build context per image (``sandbox-images/`` in the repo)."""
    override = os.environ.get("OI_IMAGES_DIR")
    if override:
        return Path(override)
    return Path(str(resources.files("orchestrator.sandbox_images")))


def context_hash(directory: Path, base: str) -> str:
    """sha256 over the context's files (path + content) and the requested base image."""
    digest = hashlib.sha256()
    digest.update(f"base={base}\n".encode())
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        if path.name in ("__init__.py", BUILD_CA_NAME) or "__pycache__" in path.parts:
            continue
        digest.update(str(path.relative_to(directory)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


@dataclass(frozen=True)
class ImageStatus:
    name: str
    tag: str
    present: bool
    image_id: str | None = None
    stale_tags: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ResolvedImage:
    tag: str
    image_id: str


class ImageCatalog:
    """Knows the expected tag of each sandbox image, and builds the ones that are missing."""

    def __init__(
        self,
        client: docker.DockerClient,
        *,
        prefix: str = "oi-sandbox",
        base_image: str = "debian:bookworm-slim",
        root: Path | None = None,
        ca_bundle: Path | None = None,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._base_image = base_image
        self._root = root or context_root()
        self._ca_bundle = ca_bundle  # for builds; None: the host's, if there is one
        self._resolved: dict[str, ResolvedImage] = {}
        self._tags: dict[str, str] = {}  # the build contexts are files of this installed oi

    def repository(self, name: str) -> str:
        return f"{self._prefix}-{name}"

    def expected_tag(self, name: str) -> str:
        """``<prefix>-<name>:<hash>`` of the build context and of what it is built on (the
        base image, or its parent sandbox image's own tag): a change below rebuilds above.
        Hashed once per catalog (the approval panel and every result name the image)."""
        known = self._tags.get(name)
        if known is not None:
            return known
        parent = PARENTS.get(name)
        below = self.expected_tag(parent) if parent else self._base_image
        digest = context_hash(self._root / name, below)
        self._tags[name] = tag = f"{self.repository(name)}:{digest[:12]}"
        return tag

    def resolve(self, language: Language, toolbox: Toolbox = "standard") -> ResolvedImage:
        """The image for a language in a toolbox, or ``ImageMissingError`` saying how to
        build it."""
        name = image_for(language, toolbox)
        purpose = language.value if toolbox == "standard" else f"{language.value} ({toolbox})"
        return self.resolve_name(name, purpose)

    def resolve_name(self, name: str, purpose: str | None = None) -> ResolvedImage:
        """The image built from ``sandbox-images/<name>``, or ``ImageMissingError``."""
        cached = self._resolved.get(name)
        if cached:
            return cached
        tag = self.expected_tag(name)
        try:
            with engine_errors(f"looking up image {tag}"):
                attrs = self._client.api.inspect_image(tag)
        except ImageMissingError:
            raise ImageMissingError(
                f"sandbox image {tag} for {purpose or name} is not built (or is stale); "
                "run 'oi images build' (or 'make setup')"
            ) from None
        resolved = ResolvedImage(tag, str(attrs["Id"]))
        self._resolved[name] = resolved
        return resolved

    def status(self) -> list[ImageStatus]:
        statuses = []
        for name in ALL_IMAGES:
            tag = self.expected_tag(name)
            with engine_errors("listing images"):
                images = self._client.api.images(name=self.repository(name))
            present_id = None
            stale: list[str] = []
            for image in images:
                for repo_tag in image.get("RepoTags") or []:
                    if repo_tag == tag:
                        present_id = str(image["Id"])
                    elif repo_tag.startswith(self.repository(name) + ":"):
                        stale.append(repo_tag)
            statuses.append(ImageStatus(name, tag, present_id is not None, present_id, stale))
        return statuses

    # --- building -----------------------------------------------------------------------------

    def _image_exists(self, ref: str) -> bool:
        try:
            with engine_errors(f"looking up image {ref}"):
                self._client.api.inspect_image(ref)
        except ImageMissingError:
            return False
        return True

    def ensure_base(self, progress: Progress = _quiet) -> str:
        """A local base image ref: the configured one, pulled if possible, else bootstrapped."""
        wanted = self._base_image
        if self._image_exists(wanted):
            return wanted
        progress(f"pulling {wanted} ...")
        try:
            repo, _, tag = wanted.partition(":")
            self._client.api.pull(repo, tag=tag or "latest")
            if self._image_exists(wanted):
                progress(f"pulled {wanted}")
                return wanted
        except (docker.errors.APIError, docker.errors.DockerException) as exc:
            progress(f"cannot pull {wanted} ({str(exc).splitlines()[0][:160]})")
        if self._image_exists(BOOTSTRAP_BASE):
            progress(f"using the bootstrapped base {BOOTSTRAP_BASE}")
            return BOOTSTRAP_BASE
        progress(
            f"no registry: bootstrapping a Debian bookworm base with debootstrap as "
            f"{BOOTSTRAP_BASE} (one time, a few minutes)"
        )
        self._bootstrap_base(progress)
        return BOOTSTRAP_BASE

    def _bootstrap_base(self, progress: Progress) -> None:
        debootstrap = shutil.which("debootstrap") or (
            "/usr/sbin/debootstrap" if Path("/usr/sbin/debootstrap").exists() else None
        )
        if debootstrap is None or os.geteuid() != 0:
            raise ImageBuildError(
                f"cannot pull {self._base_image} and cannot bootstrap a base: "
                "debootstrap needs root and the 'debootstrap' package; run 'sudo make setup', "
                f"or make {self._base_image} available (docker load / a registry)"
            )
        mirror = os.environ.get("OI_DEBIAN_MIRROR", "http://deb.debian.org/debian")
        with tempfile.TemporaryDirectory(prefix="oi-debootstrap-") as tmp:
            rootfs = Path(tmp) / "rootfs"
            proc = subprocess.run(
                [debootstrap, "--variant=minbase", "bookworm", str(rootfs), mirror],
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-10:])
                raise ImageBuildError(f"debootstrap from {mirror} failed:\n{tail}")
            progress("importing the bootstrapped root filesystem into Docker ...")
            archive = Path(tmp) / "rootfs.tar"
            with tarfile.open(archive, "w") as tar:
                tar.add(str(rootfs), arcname=".")
            shutil.rmtree(rootfs, ignore_errors=True)
            repo, _, tag = BOOTSTRAP_BASE.partition(":")
            with engine_errors("importing the bootstrapped base"):
                self._client.api.import_image_from_file(
                    str(archive), repository=repo, tag=tag, changes=['CMD ["bash"]']
                )

    def build(
        self,
        names: list[str] | None = None,
        *,
        force: bool = False,
        progress: Progress = _quiet,
    ) -> list[ImageStatus]:
        """Build the missing (or all, with ``force``) images; return the new status."""
        wanted = set(names or ALL_IMAGES)
        for child in list(wanted):  # a parent that is missing is built first
            while child in PARENTS:
                child = PARENTS[child]  # noqa: PLW2901 - walking up the chain
                wanted.add(child)
        statuses = {s.name: s for s in self.status()}
        todo = [n for n in ALL_IMAGES if n in wanted and (force or not statuses[n].present)]
        todo.sort(key=lambda n: n in PARENTS)  # parents (no parent) before children
        if not todo:
            progress("all sandbox images are up to date")
            return self.status()
        base = self.ensure_base(progress)
        for name in todo:
            tag = statuses[name].tag
            below = statuses[PARENTS[name]].tag if name in PARENTS else base
            progress(f"building {tag} (base {below}) ...")
            self._build_one(name, tag, below, progress)
            progress(f"built {tag}")
        self._resolved.clear()
        return self.status()

    def build_context(self, name: str) -> bytes:
        """The build context of ``sandbox-images/<name>`` as a tar, with the CA bundle."""
        directory = self._root / name
        ca = find_ca_bundle(self._ca_bundle)
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for path in sorted(p for p in directory.rglob("*") if p.is_file()):
                if path.name in ("__init__.py", BUILD_CA_NAME) or "__pycache__" in path.parts:
                    continue
                tar.add(str(path), arcname=str(path.relative_to(directory)), recursive=False)
            data = ca.read_bytes() if ca is not None else b""
            info = tarfile.TarInfo(BUILD_CA_NAME)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
        return buffer.getvalue()

    def _build_one(self, name: str, tag: str, base: str, progress: Progress) -> None:
        log: list[str] = []
        context = io.BytesIO(self.build_context(name))
        with engine_errors(f"building image {tag}"):
            events = self._client.api.build(
                fileobj=context,
                custom_context=True,
                tag=tag,
                buildargs={"BASE": base},
                rm=True,
                forcerm=True,
                pull=False,
                decode=True,
                labels={"oi.image": name, "oi.base": self._base_image},
            )
            for event in events:
                self._on_build_event(event, log, progress, tag)

    @staticmethod
    def _on_build_event(
        event: dict[str, Any], log: list[str], progress: Progress, tag: str
    ) -> None:
        if "error" in event:
            tail = "\n".join(log[-15:])
            raise ImageBuildError(f"building {tag} failed: {event['error'].strip()}\n{tail}")
        line = str(event.get("stream", "")).rstrip()
        if line:
            log.append(line)
            if line.startswith("Step "):
                progress(f"  {line}")

    def prune_stale(self) -> list[str]:
        removed = []
        for status in self.status():
            for tag in status.stale_tags:
                with engine_errors(f"removing stale image {tag}"):
                    self._client.api.remove_image(tag)
                removed.append(tag)
        return removed
