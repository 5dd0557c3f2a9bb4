"""The web dashboard served at `/`: jobs with their curves, files with their reports, models and a playground."""

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from app.api.dashboard.pages import install_page_answers, router


def install_dashboard(app: FastAPI) -> None:
    app.include_router(router)
    install_page_answers(app)
    app.mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static")
