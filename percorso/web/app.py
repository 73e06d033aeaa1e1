"""The FastAPI application: collector, REST API, health. ``create_app`` is the one factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi_offline import FastAPIOffline

from percorso import __version__
from percorso.analytics.worker import StageWorker
from percorso.automation.engine import AutomationWorker, Engine, EngineSettings
from percorso.channels import ChannelClassifier, load_rules
from percorso.collect.browser import BrowserCors
from percorso.collect.keys import KeyRing
from percorso.collect.routes import router as collect_router
from percorso.collect.writer import GroupCommitWriter
from percorso.config import Settings
from percorso.events import Limits
from percorso.store import Store, open_store
from percorso.web import dashboard
from percorso.web.analytics import router as analytics_router
from percorso.web.automations import onsite as onsite_router
from percorso.web.automations import public as links_router
from percorso.web.automations import router as automations_router
from percorso.web.contacts import router as contacts_router
from percorso.web.errors import install_error_handlers
from percorso.web.guard import refuse_nul
from percorso.web.keys import router as keys_router
from percorso.web.openapi import UNAVAILABLE, describe
from percorso.web.surveys import answers as answers_router
from percorso.web.surveys import router as surveys_router


def create_app(settings: Settings | None = None, store: Store | None = None) -> FastAPI:
    """The whole HTTP surface. Pass a ``store`` to share one you opened; otherwise it opens its own."""
    settings = settings or Settings.from_env()
    classifier = ChannelClassifier(load_rules(settings.channels_file or None))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = store is None
        active = store if store is not None else open_store(settings)
        writer = GroupCommitWriter(active, max_events=settings.max_commit_events)
        writer.start()
        stages = StageWorker(active, settings.stage_interval) if settings.stage_interval > 0 else None
        if stages is not None:
            stages.start()
        app.state.stage_worker = stages
        engine = Engine(active, settings=EngineSettings.from_settings(settings))
        app.state.engine = engine
        automation = None
        if settings.automation_worker:
            automation = AutomationWorker(
                engine, listen_url=settings.database_url if active.engine == "postgres" else None
            )
            automation.start()
        app.state.automation_worker = automation
        app.state.store = active
        app.state.writer = writer
        app.state.keys = KeyRing(active)
        if settings.dashboard_cache_seconds > 0:
            dashboard.warm(app)
        try:
            yield
        finally:
            if automation is not None:
                automation.stop()
            if stages is not None:
                stages.stop()
            writer.stop()
            if owned:
                active.close()

    # FastAPIOffline: FastAPI whose /docs loads Swagger UI from percorso itself
    # (/static-offline-docs), not from a CDN, so the API reference works offline.
    app = FastAPIOffline(
        redoc_url=None,
        title="percorso",
        version=__version__,
        summary="Customer journey platform: Segment-compatible collector and REST API",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.classifier = classifier
    app.state.limits = Limits.from_settings(settings)
    install_error_handlers(app)
    app.add_middleware(BrowserCors)
    # The collector checks its own bodies message by message and reads no query: it is left out
    # of the NUL guard, which would only add work to every event sent.
    app.include_router(collect_router)
    guarded = [Depends(refuse_nul)]
    for router in (
        surveys_router,
        answers_router,
        contacts_router,
        keys_router,
        analytics_router,
        automations_router,
        onsite_router,
        links_router,
    ):
        app.include_router(router, dependencies=guarded)
    dashboard.install(app, cache_seconds=settings.dashboard_cache_seconds, dependencies=guarded)
    describe(app)

    @app.get("/health", tags=["health"], summary="Liveness and store status", responses=UNAVAILABLE)
    def health(request: Request) -> dict[str, Any]:
        active: Store = request.app.state.store
        return {
            "status": "ok",
            "version": __version__,
            "store": active.engine,
            "schema": active.schema_version(),
        }

    return app


def app_from_env() -> FastAPI:
    """The application configured from the environment (for multi-process ``percorso serve``)."""
    return create_app(Settings.from_env())
