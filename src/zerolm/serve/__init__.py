"""`zerolm serve`: models over HTTP with dynamic micro-batching.

- `app.create_app(models, settings)`: the FastAPI app (routes, errors, API key, body
  limit, CORS, metrics, the web page);
- `batcher.MicroBatcher`: concurrent requests for a model run together, bounded by
  batch size, wait and padded tokens, grouped by length;
- `engine.Endpoint`: one served model, its routes and batch functions (the same calls as
  `zerolm.load(...).predict / .embed / .generate`), and `TextStream` for token streaming;
- `metrics.Metrics`: Prometheus counters and histograms.

FastAPI and uvicorn are the `serve` extra: `pip install 'zerolm[serve]'`.
"""

from __future__ import annotations

from zerolm.serve.app import create_app
from zerolm.serve.server import ServeSettings

__all__ = ["ServeSettings", "create_app"]
