"""The Queue tab: every job (waiting, running, recent), with Cancel for the viewer's own jobs.

A timer refreshes the list only while this tab is open; rows are re-rendered only when something
changed. Other sessions' jobs are listed without their prompt.
"""
from __future__ import annotations

import html
from typing import Any

import gradio as gr

from modules.queue import FINISHED
from webui.context import UIContext, owner_of
from webui.generation import format_eta

TAB = "queue"
REFRESH_SECONDS = 1.5


def rows(ctx: UIContext, owner: str) -> list[dict[str, Any]]:
    """A plain snapshot of the queue, newest first, as the viewer may see it."""
    out = []
    for job in reversed(ctx.queue.list_jobs()):
        s = job.snapshot()
        mine = s.owner == owner
        steps = f"{s.step}/{s.total_steps}" if s.total_steps else ""
        out.append({
            "id": s.id, "status": s.status, "mine": mine, "cancellable": mine and s.status not in FINISHED,
            "label": s.label if mine or s.owner is None else "(another session's job)",
            "progress": " ".join(p for p in (steps, format_eta(s.eta)) if p), "error": s.error or "",
        })
    return out


def build(ctx: UIContext) -> gr.Timer:
    """Build the tab; returns its timer so the app can switch it on only while the tab is shown."""
    timer = gr.Timer(REFRESH_SECONDS, active=False)
    jobs = gr.State([])
    gr.Markdown("Jobs run one at a time, oldest first. You can cancel your own waiting or running jobs.")

    def refresh(current: list[dict[str, Any]], request: gr.Request) -> Any:
        new = rows(ctx, owner_of(request))
        return gr.skip() if new == current else new

    timer.tick(refresh, inputs=jobs, outputs=jobs, show_progress="hidden", api_visibility="private")
    refresh_button = gr.Button("Refresh", size="sm", elem_id="queue-refresh")
    refresh_button.click(refresh, inputs=jobs, outputs=jobs, api_visibility="private")

    @gr.render(inputs=jobs)
    def render(items: list[dict[str, Any]]) -> None:
        if not items:
            gr.Markdown("The queue is empty.", elem_classes=["queue-empty"])
            return
        for item in items:
            with gr.Row(elem_classes=["queue-row"], key=f"row-{item['id']}"):
                text = (f"<code>{item['id'][:8]}</code> <b>{html.escape(item['status'])}</b> "
                        f"{html.escape(item['progress'])} — {html.escape(item['label'])}")
                if item["error"]:
                    text += f" <span class='palette-error-inline'>{html.escape(item['error'])}</span>"
                gr.HTML(text, key=f"text-{item['id']}")
                if item["cancellable"]:
                    button = gr.Button("Cancel", size="sm", scale=0, min_width=80, key=f"cancel-{item['id']}",
                                       elem_classes=["queue-cancel"])
                    button.click(canceller(ctx, item["id"]), outputs=jobs, api_visibility="private")

    return timer


def canceller(ctx: UIContext, job_id: str) -> Any:
    """A click handler cancelling one job, if it belongs to whoever clicks."""

    def cancel(request: gr.Request) -> list[dict[str, Any]]:
        owner = owner_of(request)
        job = ctx.queue.get(job_id)
        if job is not None and job.owner == owner:
            job.cancel()
        return rows(ctx, owner)

    return cancel
