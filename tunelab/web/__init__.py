"""The studio: the lab's workflow in the browser, served by `tunelab serve` at `/`.

The pages are static files (`static/`: plain HTML, CSS and JavaScript modules, Chart.js vendored) that call only
the public HTTP API under `/v1`, with the same key the SDK sends. `routes.py` serves them and the sign-in link.
"""
