"""Extract the embedded sample dataset shipped in tsconv/data/sample/.

Source: the `bokeh-sampledata` wheel on PyPI (BSD-3-Clause package) carries
`bokeh_sampledata/_data/stocks.csv.gz`: daily OHLCV + Adj Close of AAPL, GOOG, IBM and MSFT,
2000-2013, from the Quandl WIKI Prices database, recorded as public domain in the wheel's
`licenses/datasets.json`. We re-encode it with tsconv's canonical lowercase column names.
tsconv does not depend on bokeh at run time: run this script once (it needs network access to the
package registry) and commit its output.

    python scripts/make_sample_data.py
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pandas as pd

OUT = Path(__file__).resolve().parents[1] / "tsconv" / "data" / "sample" / "ohlcv.csv.gz"
MEMBER = "bokeh_sampledata/_data/stocks.csv.gz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, help="an already downloaded bokeh_sampledata wheel")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel
        if wheel is None:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "-q",
                    "-d",
                    tmp,
                    "bokeh-sampledata==2026.1",
                ],
                check=True,
            )
            wheel = next(Path(tmp).glob("bokeh_sampledata-*.whl"))
        with zipfile.ZipFile(wheel) as zf, zf.open(MEMBER) as fh:
            raw = pd.read_csv(fh, compression="gzip")
    frame = raw.rename(
        columns={
            "Ticker": "ticker",
            "Date": "date",
            "Open": "open",
            "High": "high",
            "Low": "low",
            "Close": "close",
            "Volume": "volume",
            "Adj Close": "adj_close",
        }
    )
    frame = frame[["ticker", "date", "open", "high", "low", "close", "adj_close", "volume"]]
    frame = frame.sort_values(["ticker", "date"])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(OUT, index=False, compression={"method": "gzip", "mtime": 0}, float_format="%.6g")
    print(f"wrote {OUT} ({len(frame)} rows, tickers {sorted(frame.ticker.unique())})")


if __name__ == "__main__":
    main()
