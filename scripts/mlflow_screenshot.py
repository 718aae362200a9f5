"""Screenshot the MLflow UI comparing the evaluate runs of a pipeline, for the README.

Starts `mlflow ui` on the local store, opens the run comparison (scatter of accuracy vs blocks) of the
latest evaluate runs in headless Chromium (Debian's package) and writes docs/mlflow-compare.png.
Run it after `make repro`:  python scripts/mlflow_screenshot.py
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse

from drllm_core import tracking


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="docs/mlflow-compare.png")
    parser.add_argument("--port", type=int, default=5055)
    args = parser.parse_args(argv)
    mlflow = tracking.configure()
    runs = mlflow.search_runs(
        experiment_names=[tracking.EXPERIMENT],
        filter_string="tags.`drllm.stage` = 'evaluate'",
        order_by=["attributes.start_time DESC"],
    )
    # the latest pipeline only: an older run's configuration names may no longer exist
    runs = runs[runs["tags.drllm.pipeline"] == runs["tags.drllm.pipeline"].iloc[0]]
    latest = runs.drop_duplicates("tags.mlflow.runName")
    ids = list(latest["run_id"])
    experiment = latest["experiment_id"].iloc[0]
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "ui",
            "--backend-store-uri",
            tracking.tracking_uri(),
            "--port",
            str(args.port),
            "--host",
            "127.0.0.1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(120):
            try:
                socket.create_connection(("127.0.0.1", args.port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        from playwright.sync_api import sync_playwright

        query = urllib.parse.urlencode({"runs": json.dumps(ids), "experiments": json.dumps([experiment])})
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=shutil.which("chromium"),
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(f"http://127.0.0.1:{args.port}/#/compare-runs?{query}")
            page.wait_for_timeout(8000)
            close_assistant = page.get_by_role("button", name="Close")
            if close_assistant.count():
                close_assistant.first.click()
            # The scatter plot opens on accuracy vs blocks per token: the Pareto picture.
            page.get_by_text("Scatter Plot").click()
            page.wait_for_timeout(2000)
            page.screenshot(path=args.out, full_page=False)
            browser.close()
        print(f"wrote {args.out} ({len(ids)} runs)")
    finally:
        server.terminate()


if __name__ == "__main__":
    main()
