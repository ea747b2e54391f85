"""The example app of the README: answers who served the request."""

import os

from flask import Flask

app = Flask(__name__)


@app.get("/")
def index() -> str:
    env = os.environ
    return (
        f"Hello from example: dyno={env.get('DYNO', '?')} job={env.get('ENCOM_JOB_ID', '?')} "
        f"port={env.get('PORT', '?')} greeting={env.get('GREETING', 'none')}\n"
    )


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "5000"))
    print(f"Listening on {port}", flush=True)
    app.run(host="0.0.0.0", port=port)
