"""``--vision`` in the agent loop (scripted model, a fake runner that writes files): the images a
block made go to the model in the next request; without ``--vision`` nothing changes; a server
that refuses images is told about once, and the session goes on without them."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import openai
import pytest
from PIL import Image

from orchestrator.errors import ModelError
from orchestrator.events import Notice, SessionEnded
from orchestrator.languages import Language
from orchestrator.llm.client import ImagesUnsupportedError, ModelClient
from orchestrator.session import Session
from orchestrator.settings import Settings
from orchestrator.transcript import Transcript, read_records, rebuild_history
from tests.fake_vllm import FakeVllm, Reply
from tests.fakes import FakeRunner, Say, ScriptedModel
from tests.unit.test_session_loop import Script, fence


def png_bytes(width: int = 900, height: int = 600) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (30, 90, 200)).save(out, "PNG")
    return out.getvalue()


def plotting_runner(workdir: Path) -> FakeRunner:
    """Each block 'plots': it writes chart.png (a new one each time) in the workdir."""
    counter = {"n": 0}

    def behaviour(_language: Language, _code: str) -> tuple[int, str, str]:
        counter["n"] += 1
        (workdir / "chart.png").write_bytes(png_bytes(900 + counter["n"], 600))
        return 0, "saved chart.png\n", ""

    return FakeRunner(behaviour=behaviour, workdir=workdir)


def images_in(request: dict[str, Any]) -> list[str]:
    return [
        part["image_url"]["url"]
        for message in request["messages"]
        if isinstance(message.get("content"), list)
        for part in message["content"]
        if part.get("type") == "image_url"
    ]


def session_for(
    tmp_path: Path, *replies: Say | str, vision: bool, record: Path | None = None
) -> tuple[Session, ScriptedModel]:
    model = ScriptedModel(*replies)
    settings = Settings(workdir=tmp_path, tool_mode="markdown", auto_run=True, vision=vision)
    transcript = Transcript.open(record) if record else None
    session = Session(
        model=model, runner=plotting_runner(tmp_path), settings=settings, transcript=transcript
    )
    return session, model


def test_the_chart_a_block_saved_goes_with_the_next_request(tmp_path: Path) -> None:
    record = tmp_path / "rec" / "s.jsonl"
    record.parent.mkdir()
    session, model = session_for(
        tmp_path, fence("plot()"), "The chart shows a rise.", vision=True, record=record
    )
    script = Script()
    assert script.run(session.send("plot it")) == "finished"
    first, second = model.requests
    assert images_in(first) == []
    (url,) = images_in(second)
    assert url.startswith("data:image/png;base64,")
    carrier = second["messages"][-1]
    assert carrier["role"] == "user" and carrier["content"][0]["text"].startswith(
        "[oi] images the block made, attached: chart.png (768x511 from 901x600, "
    )
    notes = [n.message for n in script.of(Notice)]
    assert any(n.startswith("sent to the model: chart.png (768x511") for n in notes), notes
    session.transcript.close()  # type: ignore[union-attr]
    text = record.read_text()
    assert "base64" not in text and "[image image/png sha256:" in text  # described, not kept
    records = list(read_records(record))
    history = rebuild_history(records)  # a resumed session gets every message back, as text
    assert [m["role"] for m in history] == [m["role"] for m in session.messages]
    assert "[oi] images the block made, attached: chart.png" in history[-2]["content"]


def test_without_vision_nothing_changes(tmp_path: Path) -> None:
    session, model = session_for(tmp_path, fence("plot()"), "Done.", vision=False)
    script = Script()
    assert script.run(session.send("plot it")) == "finished"
    assert all(images_in(request) == [] for request in model.requests)
    assert (tmp_path / "chart.png").exists()  # the block did make one (control)
    assert not [n for n in script.of(Notice) if "model" in n.message]
    assert all(isinstance(m.get("content"), str | None) for m in model.requests[-1]["messages"])


def test_a_server_refusing_images_is_named_once_and_the_session_goes_on(tmp_path: Path) -> None:
    refusal = ImagesUnsupportedError("the model server at x does not take images")
    session, model = session_for(
        tmp_path,
        fence("plot()"),
        Say(error=refusal),  # the request carrying the chart
        fence("plot()"),  # asked again without it: the model goes on
        "Both charts are saved.",
        vision=True,
    )
    script = Script()
    assert script.run(session.send("plot twice")) == "finished"
    assert len(model.requests) == 4
    assert len(images_in(model.requests[1])) == 1  # the one refused
    assert [images_in(r) for r in model.requests[2:]] == [[], []]
    assert "image not sent: the model server takes none" in json.dumps(model.requests[2])
    refused = [n.message for n in script.of(Notice) if "does not take images" in n.message]
    assert refused == [
        "the model server at x does not take images; going on without images (1 left out)"
    ]
    (end,) = script.of(SessionEnded)
    assert end.status == "finished"


def test_a_second_refusal_is_an_error(tmp_path: Path) -> None:
    refusal = ImagesUnsupportedError("no images")
    session, _ = session_for(tmp_path, Say(error=refusal), Say(error=refusal), vision=True)
    session.images.disable()  # already off: nothing to strip, the error is the server's
    with pytest.raises(ImagesUnsupportedError):
        Script().run(session.send("hi"))


def test_a_persons_image_goes_with_their_message_and_undo_forgets_it(tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(png_bytes(100, 50))
    session, model = session_for(tmp_path, "A blue rectangle.", "Still blue.", vision=True)
    session.images.queue(photo)
    Script().run(session.send("what is in this picture?"))
    (url,) = images_in(model.requests[0])
    assert url.startswith("data:image/png;base64,")
    assert model.requests[0]["messages"][-1]["content"][0]["text"] == "what is in this picture?"
    Script().run(session.send("and now?"))
    assert images_in(model.requests[1]) == [url]  # still in the conversation
    assert session.undo() and session.undo()
    assert len(session.messages) == 1  # the picture's turn is gone too


def test_the_client_maps_vllms_refusal(fake_vllm: FakeVllm) -> None:
    client = ModelClient(
        openai.OpenAI(base_url=fake_vllm.base_url, api_key="x", max_retries=0),
        model=fake_vllm.model,
    )
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    messages = [{"role": "user", "content": [{"type": "text", "text": "hi"}, image]}]
    with pytest.raises(ImagesUnsupportedError, match="is not a multimodal model") as info:
        list(client.stream_chat(messages))
    assert isinstance(info.value, ModelError) and "Qwen2.5-VL" in str(info.value)
    with FakeVllm(vision=True) as seeing:
        seeing.script(Reply(text="a picture"))
        sees = ModelClient(
            openai.OpenAI(base_url=seeing.base_url, api_key="x", max_retries=0),
            model=seeing.model,
        )
        events = list(sees.stream_chat(messages))
        assert events[-1].text == "a picture"  # type: ignore[union-attr]
        assert seeing.chat_requests[0]["messages"][0]["content"][1] == image


def test_chat_image_command_queues_for_the_next_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from orchestrator.chat import chat_command

    photo = tmp_path / "shot.png"
    photo.write_bytes(png_bytes(1600, 800))
    session, model = session_for(tmp_path, "A wide picture.", vision=True)
    chat_command(session, f"%image {photo}")
    assert "with your next message: shot.png (768x384 from 1600x800" in capsys.readouterr().err
    Script().run(session.send("describe it"))
    assert len(images_in(model.requests[0])) == 1
    off, _ = session_for(tmp_path, vision=False)
    chat_command(off, f"%image {photo}")
    assert "images go to the model only with --vision" in capsys.readouterr().err
