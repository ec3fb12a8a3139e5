"""`braintumor app`: one page (static/, shipped in the package) and a small JSON API, served by Starlette on
uvicorn (both already installed by MLflow 3, whose own server uses them).

    GET  /                                  the page (static/index.html; its script and style under /static/)
    GET  /api/model                         the model facts for the header (answers.model_facts)
    GET  /model-card                        the model card, as text (404 when the model has none)
    POST /api/scans                         one file's raw bytes as the body -> its answer (answers.Answers.answer)
    GET  /api/scans/{id}/{index}/picture.png   a picture as the network sees it (the centre crop)
    GET  /api/scans/{id}/{index}/gradcam.png   its Grad-CAM heat map

One file per request, its bytes as the body: no multipart parser, no file name sent. The size limit
(data.max_file_bytes of the model's params) is checked on Content-Length before a byte is read, and again while the
body streams in; the pixel limits (data.max_image_pixels, data.max_aspect_ratio) on the headers, before decoding
(scans/limits.py, checked by every reader). At most `MAX_UPLOADS_AT_ONCE` uploads are read at a time, so memory
stays bounded.
Nothing is logged per request (no access log): no file name or pixel reaches a log.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from braintumor.app.answers import Answers
from braintumor.errors import BrainTumorError
from braintumor.scans.limits import ImageProblem, check_file_size, problem_of

STATIC = Path(__file__).with_name("static")
MAX_UPLOADS_AT_ONCE = 2
log = logging.getLogger(__name__)
# Everything the page loads comes from this server: no CDN, no web font, no inline script, no frame around it.
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' blob:; script-src 'self'; style-src 'self'; "
        b"connect-src 'self'; font-src 'none'; object-src 'none'; base-uri 'none'; "
        b"form-action 'none'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


class _SecurityHeaders:
    """ASGI middleware: SECURITY_HEADERS on every response, and `no-store` on the API's (answers about scans)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        private = scope.get("path", "").startswith(("/api/", "/model-card"))

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                extra = SECURITY_HEADERS + ([(b"cache-control", b"no-store")] if private else [])
                message["headers"] = list(message.get("headers", [])) + extra
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(answers: Answers, facts: dict[str, Any]) -> Starlette:
    uploads = asyncio.Semaphore(MAX_UPLOADS_AT_ONCE)
    max_bytes = answers.predictor.limits.max_file_bytes
    header = {key: value for key, value in facts.items() if key != "card"}
    header["has_card"] = facts.get("card") is not None

    async def index(_: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    async def model(_: Request) -> Response:
        return JSONResponse(header)

    async def model_card(_: Request) -> Response:
        if facts.get("card") is None:
            return PlainTextResponse("This model has no model card (it is not a registered version).", status_code=404)
        return PlainTextResponse(facts["card"])

    async def upload(request: Request) -> Response:
        async with uploads:
            try:
                data = await read_body(request, max_bytes)
            except ImageProblem as exc:
                return JSONResponse({"problem": str(exc)}, status_code=413)
            try:
                return JSONResponse(await run_in_threadpool(answers.answer, data))
            except Exception as exc:  # one file's problem, whatever it is: the page and the other files go on
                if not isinstance(exc, (BrainTumorError, ImageProblem)):
                    log.warning("an upload could not be prepared (%s)", type(exc).__name__)
                # 200: the request was understood; the answer is that this file cannot be used, and why
                return JSONResponse({"problem": problem_of(exc)})

    def picture(make):
        async def endpoint(request: Request) -> Response:
            png = await run_in_threadpool(make, request.path_params["scan"], request.path_params["index"])
            if png is None:
                return PlainTextResponse(
                    "no such picture (the server keeps the latest scans only): drop the file again", status_code=404
                )
            return Response(png, media_type="image/png")

        return endpoint

    routes = [
        Route("/", index),
        Route("/api/model", model),
        Route("/model-card", model_card),
        Route("/api/scans", upload, methods=["POST"]),
        Route("/api/scans/{scan}/{index:int}/picture.png", picture(answers.picture_png)),
        Route("/api/scans/{scan}/{index:int}/gradcam.png", picture(answers.gradcam_png)),
        Mount("/static", StaticFiles(directory=STATIC)),
    ]
    app = Starlette(routes=routes)
    app.add_middleware(_SecurityHeaders)
    return app


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request's body, refused (ImageProblem, predict's wording) once it is over `max_bytes`: by its declared
    Content-Length before anything is read, else as soon as the bytes streamed in pass the limit."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit():
        check_file_size(int(declared), max_bytes)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        check_file_size(size, max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str) -> str | None:
    """What `braintumor app` prints when the page is reachable from other machines."""
    if is_loopback(host):
        return None
    return (
        f"warning: --host {host} makes the page reachable from other machines, and it has no authentication: "
        "anyone who can reach this port can send scans and see the answers. Put it behind the hospital's "
        "reverse proxy (with its sign-in and TLS), or keep the default --host 127.0.0.1."
    )


def run_app(model: str, *, host: str = "127.0.0.1", port: int = 8000, device: str = "auto") -> None:
    """Load the model (a file or a models:/ URI), then serve the page until Ctrl-C."""
    import uvicorn

    from braintumor.app.answers import model_facts
    from braintumor.model.predictor import Predictor
    from braintumor.predict import resolve_model
    from braintumor.runtime import prediction_device
    from braintumor.serving.prediction_log import PredictionLog, model_identity

    _check_port(host, port)  # before the model is fetched
    target = prediction_device(device)
    path = resolve_model(model)
    predictor = Predictor(path, device=target)
    facts = model_facts(model, path, predictor)
    version = f" version {facts['version']}" if facts["version"] else ""
    aliases = f" (@{', @'.join(facts['aliases'])})" if facts["aliases"] else ""
    warning = exposure_warning(host)
    if warning:
        print(warning)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    print(
        f"braintumor app: {facts['name']}{version}{aliases} on {target}; open http://{shown}:{port}/ (Ctrl-C stops it)",
        flush=True,
    )
    prediction_log = PredictionLog.from_env()
    identity = model_identity(path, predictor.bundle, model if ":/" in model else None) if prediction_log else None
    if prediction_log is not None:
        print(f"prediction log: {prediction_log.path} (BRAINTUMOR_PREDICTION_LOG)", flush=True)
    answers = Answers(predictor, prediction_log=prediction_log, identity=identity)
    uvicorn.run(create_app(answers, facts), host=host, port=port, log_level="warning", access_log=False)


def _check_port(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise BrainTumorError(
                f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port, or stop what uses it"
            ) from None
