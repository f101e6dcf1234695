"""`oi chat` in a real pseudo-terminal: markdown rendering, the approval keys, Ctrl-C."""

from __future__ import annotations

import os
from pathlib import Path

import docker
import pexpect

from tests.fake_vllm import FakeVllm, Reply
from tests.sandbox_fixtures import OI, pid_containers


def test_chat_in_a_terminal(
    workdir: Path, tmp_path: Path, fake_vllm: FakeVllm, docker_client: docker.DockerClient
) -> None:
    long_block = "import time\nprint('block started', flush=True)\ntime.sleep(600)\n"
    fake_vllm.script(
        Reply(text="## Plan\n\nI will **count** files.\n\n```sh\nls | wc -l\n```\n"),
        Reply(text="There are **no** files."),
        Reply(text=f"Sleeping now.\n\n```python\n{long_block}```\n"),
        Reply(text="You're welcome."),
    )
    env = {
        **os.environ,
        "OI_API_BASE": fake_vllm.base_url,
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "OI_CONFIG_FILE": str(tmp_path / "none.toml"),
        "TERM": "xterm-256color",
        "COLUMNS": "120",
        "LINES": "40",
    }
    child = pexpect.spawn(
        OI,
        ["chat", "--workdir", str(workdir)],
        env=env,
        encoding="utf-8",
        timeout=60,
        dimensions=(40, 120),
    )
    try:
        child.expect("oi> ")
        child.sendline("how many files are here?")
        child.expect("Plan")  # markdown heading rendered (no literal "## Plan")
        child.expect(r"Run it\? \[y\]es / \[n\]o / \[e\]dit / \[a\]lways / \[q\]uit")
        assert "## Plan" not in child.before
        child.send("y\r")
        child.expect("block 1: exit 0")
        child.expect("oi> ")
        child.sendline("now sleep")
        child.expect("Run it")
        child.send("y\r")
        child.expect("block started")
        # The block's container: besides init and the waiting wrapper (what a pre-started
        # one has), the program's process.
        executing = [
            c["Id"]
            for c in pid_containers(docker_client, child.pid)
            if c["State"] == "running" and len(docker_client.api.top(c["Id"])["Processes"]) > 2
        ]
        assert len(executing) == 1
        child.sendintr()  # Ctrl-C while the block runs
        child.expect("interrupted")
        child.expect("oi> ")
        # Control came back only after the block's container was killed and removed.
        assert executing[0] not in {c["Id"] for c in pid_containers(docker_client, child.pid)}
        child.sendline("%tokens")
        child.expect("completion")
        child.sendline("thanks")
        child.expect("welcome")
        child.expect("oi> ")
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
    # The interrupted block was reported to the model in the next request.
    assert "interrupted by the user" in str(fake_vllm.chat_requests[-1]["messages"])
