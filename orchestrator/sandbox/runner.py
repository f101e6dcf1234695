"""Run one block in one fresh container: launch, send the program, stream, collect, remove.

``Sandbox.run`` is the public seam. Container creation sits behind ``Launcher`` so that a pool
of pre-started containers (``pool.py``) can hand out ready ones: every container waits for its
program on stdin, runs exactly one block and is removed afterwards, always (errors and Ctrl-C
included). The container's bootstrap and the protocol spoken with it are in ``bootstrap.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import secrets
import select
import socket
import threading
import time
from collections.abc import Callable, Mapping

import docker

from orchestrator.errors import ConfigError, OiError, SandboxError
from orchestrator.languages import Language, parse_language
from orchestrator.sandbox.audit import AuditLog
from orchestrator.sandbox.bootstrap import (
    OutputScanner,
    frame_program,
)
from orchestrator.sandbox.ca import find_ca_bundle
from orchestrator.sandbox.config import SandboxConfig, SandboxDescription
from orchestrator.sandbox.container import (
    OOM_EXIT,
    DirectLauncher,
    ExecResult,
    Launcher,
    LiveContainer,
    new_session_id,
    remove_container,
)
from orchestrator.sandbox.docker import connect, engine_errors
from orchestrator.sandbox.health import (
    QUIET_PING_S,
    SIGNALLED,
    EngineLostError,
    EngineProbe,
    ended_from_outside,
    lost,
)
from orchestrator.sandbox.host import (
    check_gvisor_runtime,
    check_workdir_everywhere,
    checked_mounts,
    prepare_host,
)
from orchestrator.sandbox.images import ImageCatalog, ResolvedImage
from orchestrator.sandbox.network import EgressManager, EgressPolicy
from orchestrator.sandbox.output import STDERR, STDOUT, CappedBuffer, FrameDecoder
from orchestrator.sandbox.pool import ContainerPool, Reaper
from orchestrator.sandbox.quota import QuotaCaps, QuotaGate, QuotaLauncher
from orchestrator.sandbox.session_env import env_quota
from orchestrator.sandbox.spec import (
    ContainerSpec,
    ExtraMount,
    Identity,
    NetworkAttachment,
    build_spec,
    current_identity,
    owner_labels,
)
from orchestrator.sandbox.toolbox import image_for
from orchestrator.sandbox.watchdog import Watchdog, process_watchdog
from orchestrator.sandbox.workdir_quota import (
    DockerBlockControl,
    WorkdirQuota,
    quota_for,
)
from orchestrator.units import format_size

WARM_WAIT_S = 60.0
"""How long ``close`` waits for a warm-up that is still making its network or container."""

OutputCallback = Callable[[str, bytes], None]
"""Called with ("stdout" | "stderr", bytes) as output arrives, while the block runs."""


def _outcome(result: ExecResult) -> str:
    """One word for the audit log."""
    if result.timed_out:
        return "timed_out"
    if result.oom_killed:
        return "oom_killed"
    if result.workdir_exceeded:
        return "workdir_limit"
    return "ok" if result.exit_code == 0 else "failed"


class Sandbox:
    """Runs blocks of code, each in a fresh hardened container.

    Construct with ``Sandbox.from_config(config)``; tests inject their own docker client,
    image catalog or launcher. With ``config.pool`` (the default), ``warm(language)`` keeps
    containers of that language pre-started and ``run`` takes one when there is one. A used
    container whose block ended by itself is removed in the background (one that timed out, was
    cancelled or interrupted, before ``run`` returns); ``close()`` (or leaving a ``with`` block,
    or interpreter exit) waits for that and removes the pre-started ones. Thread-safe: blocks
    may run concurrently.
    """

    def __init__(
        self,
        client: docker.DockerClient,
        config: SandboxConfig,
        images: ImageCatalog,
        identity: Identity,
        *,
        session_id: str | None = None,
        host_env: Mapping[str, str] | None = None,
        launcher: Launcher | None = None,
        egress: EgressManager | None = None,
        audit: AuditLog | None = None,
        quota: QuotaGate | None = None,
        workdir_quota: WorkdirQuota | None = None,
        watchdog: Watchdog | None = None,
        probe: EngineProbe | None = None,
    ) -> None:
        self.config = config
        self.session_id = session_id or new_session_id()
        self.identity = identity
        self._client = client
        self._api: docker.APIClient = client.api
        self._images = images
        self._host_env = dict(os.environ if host_env is None else host_env)
        direct = launcher or DirectLauncher(self._api)
        self._direct: Launcher = direct
        self._reaper = Reaper(self._remove)
        self._settling: set[str] = set()  # blocks that ended: their containers exit by themselves
        self._egress = egress
        self._owns_egress = True  # close() removes its networks (not a ``without_env`` copy)
        self._audit = audit
        self._quota = quota
        self._watchdog = watchdog
        self._probe = probe or EngineProbe()
        self._engine_frozen = False  # then close() must not wait on the engine
        self._workdir = workdir_quota or quota_for(
            config.workdir, config.workdir_max_bytes, config.workdir_max_files
        )
        self._env_quota = (
            None
            if config.env_dir is None
            else env_quota(config.env_dir, config.env_max_bytes, config.env_max_files)
        )
        self._attachment: NetworkAttachment | None = None
        self._attachment_lock = threading.Lock()
        self._warming: threading.Thread | None = None  # close() waits for it: it may make things
        self._specs: dict[Language, ContainerSpec] = {}
        self._runtime_checked = False
        self._specs_lock = threading.Lock()
        self._mounts: tuple[ExtraMount, ...] | None = None
        self.pool: ContainerPool[LiveContainer] | None = None
        if config.pool:
            # Pre-starting never waits in a quota line: a full quota just means no warm one.
            prestart: Launcher = (
                direct if quota is None else QuotaLauncher(direct, quota, self._discard)
            )
            self.pool = ContainerPool(
                prestart, self._reaper, size=config.pool_size, idle=config.pool_idle
            )
        self.launcher: Launcher = self.pool or direct
        self._running: set[str] = set()
        self._cancelled: set[str] = set()  # killed by cancel(): removed before run() returns
        self._running_lock = threading.Lock()

    @classmethod
    def from_config(
        cls,
        config: SandboxConfig,
        *,
        session_id: str | None = None,
        client: docker.DockerClient | None = None,
    ) -> Sandbox:
        """The production wiring: checks the workdir, connects, and sets up audit and quota."""
        check_workdir_everywhere(config.workdir)
        identity = prepare_host(current_identity(config.workdir), config)
        client = client or connect()
        caps = QuotaCaps(config.quota_per_user, config.quota_total)
        return cls(
            client,
            config,
            ImageCatalog(client, prefix=config.image_prefix, base_image=config.base_image),
            identity,
            session_id=session_id,
            audit=AuditLog(config.audit_log, server_user=config.audit_user)
            if config.audit_log
            else None,
            quota=None if caps.unlimited else QuotaGate(client, caps, identity.owner_uid),
            watchdog=process_watchdog(),
        )

    def without_env(self) -> Sandbox:
        """A sandbox like this one (same workdir, limits, network, owner and session labels)
        without the session's environment: what a batch task's check runs in, so nothing the
        model's blocks installed or planted there (a ``grep`` on PATH, a ``.pth`` file) takes
        part in judging them. Shares this one's workdir bound and allowlist network (this one
        removes it)."""
        sibling = Sandbox(
            self._client,
            dataclasses.replace(self.config, env_dir=None, python_state=False, pool=False),
            self._images,
            self.identity,
            session_id=self.session_id,
            host_env=self._host_env,
            egress=self._egress,
            audit=self._audit,
            quota=self._quota,
            workdir_quota=self._workdir,
            watchdog=self._watchdog,
            probe=self._probe,
        )
        sibling._owns_egress = False
        return sibling

    def warm(self, language: Language | str) -> None:
        """Hint that a block in ``language`` is likely soon: pre-start its containers.

        Returns at once: at most one image lookup here; a network to set up first (an
        allowlist's network and proxy) is made on a thread of its own, beside the model's first
        request. A no-op without the pool; errors (say, the image is not built) are left for
        ``run`` to report.
        """
        if self.pool is None:
            return
        if self.config.network == "none" or self._attachment is not None:
            self._warm_now(language)  # one image lookup at most: no need for a thread
            return
        self._warming = threading.Thread(
            target=self._warm_now, args=(language,), name="oi-warm", daemon=True
        )
        self._warming.start()

    def _warm_now(self, language: Language | str) -> None:
        if self.pool is None:
            return
        try:
            lang = language if isinstance(language, Language) else parse_language(language)
            spec = self.spec_for(lang)
        except OiError:
            return
        self.pool.warm(spec)

    def cancel(self) -> None:
        """Kill the blocks running now (Ctrl-C from another thread); their ``run`` returns."""
        with self._running_lock:
            running = list(self._running)
            self._cancelled.update(running)
        for container_id in running:
            with contextlib.suppress(Exception):
                self._api.kill(container_id)

    def close(self) -> None:
        """Remove the pre-started containers and wait for used ones to be removed.

        Idempotent; the Sandbox can be used (and warmed) again afterwards. After the engine
        froze during a block, this happens in the background: oi must not hang on it.
        """
        if self._engine_frozen:
            self._engine_frozen = False
            threading.Thread(target=self.close, daemon=True).start()
            return
        warming = self._warming
        if warming is not None:
            warming.join(WARM_WAIT_S)
        if self.pool is not None:
            self.pool.close()
        self._reaper.drain()
        if self._egress is not None and self._attachment is not None:
            if self._owns_egress:
                self._egress.release()
            self._attachment = None
        with self._specs_lock:
            self._specs.clear()  # they name the network just released

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def spec_for(self, language: Language) -> ContainerSpec:
        """The container spec a block in ``language`` gets: built once per language and
        session (the pool stamps each container's creation time when it makes it)."""
        with self._specs_lock:
            cached = self._specs.get(language)
        if cached is not None:
            return cached
        self._check_runtime()
        image = self._images.resolve(language, self.config.toolbox)
        spec = build_spec(
            language,
            image.tag,
            self.config,
            self.identity,
            self.session_id,
            self._host_env,
            attachment=self._network_attachment(),
            extra_mounts=self._extra_mounts(),
        )
        with self._specs_lock:
            return self._specs.setdefault(language, spec)

    def _check_runtime(self) -> None:
        runtime = self.config.runtime
        if runtime is None or self._runtime_checked:
            return
        check_gvisor_runtime(self._api, runtime)
        self._runtime_checked = True

    def describe(self, language: Language) -> SandboxDescription:
        """Where a block in ``language`` would run, for the approval screen."""
        config = self.config
        return SandboxDescription(
            # The tag the image must have (no engine call: the system prompt is built before
            # the first model request, and that must not wait on Docker).
            image=self._images.expected_tag(image_for(language, config.toolbox)),
            memory=format_size(config.memory),
            cpus=config.cpus,
            pids=config.pids,
            timeout_s=config.timeout,
            network=config.network,
            isolation=config.isolation,
            workdir=str(config.workdir),
            allow_hosts=config.allow_hosts,
            mounts=tuple(
                f"{m.host} → {m.container} ({'read-only' if m.read_only else 'read-write'})"
                for m in self._extra_mounts()
            ),
            env=tuple(dict.fromkeys(entry.split("=", 1)[0] for entry in config.env)),
            keeps_installs=config.env_dir is not None,
            python_state=config.env_dir is not None and config.python_state,
        )

    def _extra_mounts(self) -> tuple[ExtraMount, ...]:
        if self._mounts is None:
            self._mounts = checked_mounts(self.config)
        return self._mounts

    def _network_attachment(self) -> NetworkAttachment | None:
        """The network beyond ``none``: the bridge, or an allowlist's network and proxy (this
        session's own, set up on first use, removed by ``close``)."""
        config = self.config
        if config.network == "none":
            return None
        with self._attachment_lock:  # a warm-up thread and a block may both ask
            return self._attach(config)

    def _attach(self, config: SandboxConfig) -> NetworkAttachment | None:
        if self._attachment is None:
            ca_bundle = find_ca_bundle(config.ca_bundle)
            if config.network == "open":
                self._attachment = NetworkAttachment("bridge", None, ca_bundle)
            else:
                hosts = config.allow_hosts
                if not hosts:
                    raise ConfigError(
                        "--network allowlist needs hosts: name them with --allow-host HOST "
                        "(or a preset: pypi, npm, debian)"
                    )
                if self._egress is None:
                    self._egress = EgressManager(
                        self._client,
                        self._images,
                        ca_bundle=ca_bundle,
                        labels=owner_labels(self.identity, self.session_id),
                    )
                route = self._egress.ensure(EgressPolicy(hosts, config.egress_ranges))
                self._attachment = NetworkAttachment(
                    route.network, route.proxy_url, ca_bundle, route.extra_hosts
                )
        return self._attachment

    def proxy_log(self, tail: int = 50) -> str:
        """The decisions of this session's allowlist proxy, one line per request ("" if none)."""
        if self._egress is None:
            return ""
        return self._egress.proxy_logs(
            EgressPolicy(self.config.allow_hosts, self.config.egress_ranges), tail
        )

    def run(
        self,
        language: Language | str,
        code: str | bytes,
        on_output: OutputCallback | None = None,
        on_status: Callable[[str], None] | None = None,
    ) -> ExecResult:
        """Run ``code`` in a fresh container and return its result once it ends.

        Output is passed to ``on_output`` live and kept capped (head + tail) in the result.
        A timeout kills the container (SIGTERM, then SIGKILL after ``kill_grace``) and is
        reported in the result. Infrastructure failures raise ``SandboxError`` subclasses.
        ``on_status`` hears about waits (a full quota) before the block starts.
        """
        lang = language if isinstance(language, Language) else parse_language(language)
        program = code.encode() if isinstance(code, str) else code
        spec = self.spec_for(lang)
        image = self._images.resolve(lang, self.config.toolbox)
        started = time.monotonic()
        outcome = "error"
        result: ExecResult | None = None
        try:
            result = self._run_in(spec, lang, program, image, on_output, on_status)
            outcome = _outcome(result)
            return result
        except KeyboardInterrupt:
            outcome = "interrupted"
            raise
        finally:
            if self._audit is not None:
                self._audit_block(spec, lang, program, outcome, result, time.monotonic() - started)

    def _audit_block(
        self,
        spec: ContainerSpec,
        language: Language,
        program: bytes,
        outcome: str,
        result: ExecResult | None,
        seconds: float,
    ) -> None:
        assert self._audit is not None
        s = self.config
        self._audit.block(
            uid=self.identity.owner_uid,
            session=self.session_id,
            code_sha256=hashlib.sha256(program).hexdigest(),
            language=language.value,
            image=spec.image,
            memory=s.memory,
            cpus=s.cpus,
            pids=s.pids,
            timeout_s=s.timeout,
            network=s.network,
            allow_hosts=list(s.allow_hosts) if s.network == "allowlist" else [],
            runtime=spec.host_config.get("runtime") or "runc",
            outcome=outcome,
            exit_code=result.exit_code if result else None,
            duration_s=round(seconds, 3),
            container_id=result.container_id if result else None,
        )

    def _launch(
        self, spec: ContainerSpec, on_status: Callable[[str], None] | None
    ) -> LiveContainer:
        """A started container for ``spec``: a pre-started one, else a new one within quota."""
        if self.pool is not None:
            live = self.pool.take(spec)
            if live is not None:
                return live
        if self._quota is None:
            return self._direct.launch(spec)
        make_room = self.pool.make_room if self.pool is not None else None
        return self._quota.launch(spec, self._direct.launch, self._discard, on_status, make_room)

    def _discard(self, live: LiveContainer) -> None:
        """Remove a started container that will run nothing (the quota took its slot back)."""
        with contextlib.suppress(OSError):
            live.sock.close()
        remove_container(self._api, live.id)

    def _run_in(
        self,
        spec: ContainerSpec,
        lang: Language,
        program: bytes,
        image: ResolvedImage,
        on_output: OutputCallback | None,
        on_status: Callable[[str], None] | None,
    ) -> ExecResult:
        for quota in self._quotas():
            quota.prepare()  # the session's baseline walk, while the container starts
        live = self._launch(spec, on_status)
        with self._running_lock:
            self._running.add(live.id)
        frozen = False
        try:
            result = self._execute(live, lang, program, image.tag, image.image_id, on_output)
        except EngineLostError:
            frozen = not live.ended
            self._engine_frozen = self._engine_frozen or frozen
            raise
        finally:
            with self._running_lock:
                self._running.discard(live.id)
                cancelled = live.id in self._cancelled
                self._cancelled.discard(live.id)
                if live.ended and not cancelled and self.config.runtime is not None:
                    self._settling.add(live.id)  # see _remove
            with contextlib.suppress(OSError):
                live.sock.close()
            if frozen:
                # The engine does not answer: a removal would wait for minutes. Try in the
                # background; the watchdog still holds the block's deadline.
                threading.Thread(
                    target=remove_container, args=(self._api, live.id), daemon=True
                ).start()
            else:
                if self._watchdog is not None:
                    self._watchdog.forget(live.id)
                if live.ended and not cancelled:
                    # Nothing of the block runs any more: remove off the hot path, but always
                    # (close() and interpreter exit wait for it).
                    self._reaper.remove(live.id)
                else:  # timed out, cancelled or interrupted: gone before run() returns
                    remove_container(self._api, live.id)
        if self.pool is not None:
            # Top the shape up only now: a container starting during the block would slow it.
            self.pool.refill(spec)
        return result

    def _quotas(self) -> list[WorkdirQuota]:
        """The bounds watched while a block runs: the workdir's, the environment's."""
        return [q for q in (self._workdir, self._env_quota) if q is not None]

    def _was_cancelled(self, live: LiveContainer) -> bool:
        with self._running_lock:
            return live.id in self._cancelled

    def _remove(self, container_id: str) -> None:
        """The reaper's removal, retried. A gVisor block that ended exits first (~0.2 s): forced
        mid-exit, Docker 20.10 waited ~30 s for it (one in two after a 200-process block)."""
        with self._running_lock:
            settling = container_id in self._settling
            self._settling.discard(container_id)
        with contextlib.suppress(Exception):  # still running after 2 s: removed by force
            if settling:
                self._api.wait(container_id, timeout=2)
        for pause in (0.1, 0.5, 2.0):
            try:
                self._api.remove_container(container_id, force=True, v=True)
                return
            except docker.errors.NotFound:
                return
            except Exception:  # whatever it was: retry, then leave it to the sweep
                time.sleep(pause)
        remove_container(self._api, container_id)

    def _execute(
        self,
        live: LiveContainer,
        language: Language,
        program: bytes,
        image: str,
        image_id: str,
        on_output: OutputCallback | None,
    ) -> ExecResult:
        config = self.config
        buffers = {
            STDOUT: CappedBuffer(config.max_output),
            STDERR: CappedBuffer(config.max_output),
        }
        names = {STDOUT: "stdout", STDERR: "stderr"}

        def deliver(stream: int, payload: bytes) -> None:
            if payload:
                buffers[stream].write(payload)
                if on_output is not None:
                    on_output(names[stream], payload)

        decoder = FrameDecoder()
        scanner: OutputScanner | None = None
        message = program
        if live.framed:
            nonce = secrets.token_hex(16).encode()
            scanner = OutputScanner(nonce, expect_greeting=not live.greeted)
            message = frame_program(nonce, program)
        control = DockerBlockControl(self._api, live.id, thaw_to_kill=config.runtime is not None)
        watches = [q.watch(control) for q in self._quotas()]
        # The clock starts when the program is sent, not when the container was made.
        started = time.monotonic()
        deadline = started + config.timeout
        if self._watchdog is not None:  # the limit holds even if this oi is killed
            self._watchdog.watch(live.id, time.time() + config.timeout + config.kill_grace)
        try:
            live.sock.sendall(message)
            live.sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            raise SandboxError(
                f"sending the program to sandbox {live.id[:12]} failed: {exc}"
            ) from exc
        for watch in watches:
            watch.start()
        try:
            timed_out = self._stream(live, scanner, decoder, deliver, deadline)
        finally:
            for watch in watches:
                watch.stop()  # before stopping or waiting for the container: no freeze then
        if any(watch.stopped_the_block for watch in watches):
            timed_out = False  # a disk bound, not the clock, ended it
        if scanner is not None:
            for stream in (STDOUT, STDERR):
                deliver(stream, scanner.flush(stream))
        if scanner is not None and scanner.finished and scanner.exit_code is not None:
            # The wrapper reported the end: no need to wait for Docker to tear the container
            # down, except to ask whether a SIGKILL came from the OOM killer.
            live.ended = True
            exit_code, oom_killed = scanner.exit_code, False
            if exit_code == OOM_EXIT:
                _, oom_killed = self._finish(live.id, timed_out=False)
        else:
            exit_code, oom_killed = self._finish(live.id, timed_out)
            live.ended = not timed_out  # Docker saw it exit: nothing of it runs any more
        overruns = [o for o in (watch.result() for watch in watches) if o is not None]
        # The one that stopped the block, else the first passed.
        overrun = min(overruns, key=lambda o: not o.stopped, default=None)
        if overrun is not None and overrun.stopped:
            oom_killed = False  # its SIGKILL came from oi
        elif exit_code in SIGNALLED and not (timed_out or oom_killed or self._was_cancelled(live)):
            reason = ended_from_outside(
                self._api, live.id, time.time() - (time.monotonic() - started)
            )
            if reason is not None:
                live.ended = True
                raise lost(reason)
        duration = time.monotonic() - started
        out, err = buffers[STDOUT], buffers[STDERR]
        return ExecResult(
            language=language.value,
            exit_code=exit_code,
            stdout=out.text(),
            stderr=err.text(),
            stdout_cut=out.cut,
            stderr_cut=err.cut,
            stdout_bytes=out.total,
            stderr_bytes=err.total,
            duration_s=round(duration, 4),
            timed_out=timed_out,
            oom_killed=oom_killed,
            container_id=live.id,
            image=image,
            image_id=image_id,
            code_sha256=hashlib.sha256(program).hexdigest(),
            workdir_overrun=overrun,
        )

    def _stream(
        self,
        live: LiveContainer,
        scanner: OutputScanner | None,
        decoder: FrameDecoder,
        deliver: Callable[[int, bytes], None],
        deadline: float,
    ) -> bool:
        """Read the block's output until it ends; True if the deadline passed first."""
        timed_out = False
        data = live.preread
        quiet_since = time.monotonic()
        while True:
            for stream, payload in decoder.feed(data):
                if stream in (STDOUT, STDERR):
                    deliver(stream, scanner.feed(stream, payload) if scanner else payload)
            if scanner is not None and scanner.finished:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            ready, _, _ = select.select([live.sock], [], [], min(remaining, 1.0))
            if not ready:
                data = b""
                if time.monotonic() - quiet_since >= QUIET_PING_S:
                    if not self._probe.answers():  # no output may mean a frozen engine
                        raise self._probe.frozen()
                    quiet_since = time.monotonic()
                continue
            quiet_since = time.monotonic()
            try:
                data = live.sock.recv(65536)
            except OSError:
                break
            if not data:
                break
        return timed_out

    def _finish(self, container_id: str, timed_out: bool) -> tuple[int, bool]:
        """Stop the container if needed; return (exit code, killed by the OOM killer)."""
        grace = self.config.kill_grace
        if timed_out and not self._probe.answers():
            raise self._probe.frozen()  # a stop would wait minutes for a frozen engine
        with engine_errors("stopping the sandbox"):
            if timed_out:
                self._api.stop(container_id, timeout=max(0, round(grace)))
            status = self._api.wait(container_id, timeout=int(grace) + 30)
        exit_code = int(status.get("StatusCode", -1))
        oom_killed = False
        if exit_code == OOM_EXIT and not timed_out:
            with engine_errors("inspecting the sandbox"):
                state = self._api.inspect_container(container_id)["State"]
            oom_killed = bool(state.get("OOMKilled"))
        return exit_code, oom_killed
