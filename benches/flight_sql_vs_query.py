"""Times every canned query over Flight SQL (ADBC) and as `coldstream query`.

Usage: flight_sql_vs_query.py COLDSTREAM_BINARY DATA_DIR FLIGHT_SQL_ADDR TOKEN_FILE [RUNS]

Start `coldstream run --data DATA_DIR --flight-sql FLIGHT_SQL_ADDR` first,
and write an analyst's token (`coldstream token --analyst NAME`) to
TOKEN_FILE. Prints a Markdown table: rows, the median milliseconds of each,
and the rows per second Flight SQL streamed.
"""

import pathlib
import statistics
import subprocess
import sys
import time

import adbc_driver_flightsql.dbapi as flightsql


def main():
    binary, data, addr, token_file = sys.argv[1:5]
    runs = int(sys.argv[5]) if len(sys.argv) > 5 else 5
    token = pathlib.Path(token_file).read_text().strip()
    queries_dir = pathlib.Path(__file__).resolve().parent.parent / "queries"
    statements = [(path.stem, path.read_text()) for path in sorted(queries_dir.glob("*.sql"))]
    statements.append(("SELECT * FROM events", "SELECT * FROM events"))
    conn = flightsql.connect(
        f"grpc://{addr}", db_kwargs={"adbc.flight.sql.authorization_header": f"Bearer {token}"}
    )
    print("| query | rows | Flight SQL, ms | `coldstream query`, ms | Flight SQL rows/s |")
    print("|---|---:|---:|---:|---:|")
    for name, sql in statements:
        over_flight, over_cli, rows = [], [], 0
        for _ in range(runs):
            start = time.perf_counter()
            with conn.cursor() as cursor:
                cursor.execute(sql)
                rows = cursor.fetch_arrow_table().num_rows
            over_flight.append(time.perf_counter() - start)
            start = time.perf_counter()
            subprocess.run(
                [binary, "query", "--data", data, "--format", "csv", "--", sql],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            over_cli.append(time.perf_counter() - start)
        flight, cli = statistics.median(over_flight), statistics.median(over_cli)
        print(f"| `{name}` | {rows:,} | {flight * 1000:.0f} | {cli * 1000:.0f} | {rows / flight:,.0f} |")


if __name__ == "__main__":
    main()
