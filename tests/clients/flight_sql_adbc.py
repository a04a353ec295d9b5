"""An analyst's session over Flight SQL with ADBC's driver (from PyPI).

Usage: flight_sql_adbc.py URI TOKEN QUERIES_DIR OUT_DIR

Lists the tables, runs every QUERIES_DIR/*.sql and writes each result, as
received, to OUT_DIR/<name>.arrow (Arrow IPC); runs a prepared statement
with a parameter, a DDL statement, and a query with a forged token; prints
a JSON summary on stdout.
"""

import json
import pathlib
import sys

import adbc_driver_flightsql.dbapi as flightsql
import pyarrow as pa
import pyarrow.ipc


def connect(uri, token):
    return flightsql.connect(uri, db_kwargs={"adbc.flight.sql.authorization_header": f"Bearer {token}"})


def first_line(error):
    return str(error).strip().splitlines()[0]


def main():
    uri, token, queries_dir, out_dir = sys.argv[1:5]
    summary = {"queries": {}}
    with connect(uri, token) as conn:
        objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
        summary["tables"] = sorted(
            table["table_name"]
            for catalog in objects
            for schema in catalog["catalog_db_schemas"] or []
            for table in schema["db_schema_tables"] or []
        )
        summary["events_schema"] = conn.adbc_get_table_schema("events").names
        for path in sorted(pathlib.Path(queries_dir).glob("*.sql")):
            with conn.cursor() as cursor:
                cursor.execute(path.read_text())
                table = cursor.fetch_arrow_table()
            with pa.OSFile(str(pathlib.Path(out_dir) / f"{path.stem}.arrow"), "wb") as sink:
                with pa.ipc.new_file(sink, table.schema) as writer:
                    writer.write_table(table)
            summary["queries"][path.stem] = table.num_rows
        with conn.cursor() as cursor:
            cursor.execute("SELECT count(*) AS n FROM events WHERE fridge_id = $1", parameters=("FR-000002",))
            summary["prepared"] = cursor.fetchone()[0]
        try:
            with conn.cursor() as cursor:
                cursor.execute("CREATE TABLE t AS SELECT 1")
                cursor.fetchall()
            summary["ddl"] = None
        except Exception as error:  # the driver raises its own error classes
            summary["ddl"] = first_line(error)
    forged = token[:-4] + ("0000" if not token.endswith("0000") else "1111")
    try:
        with connect(uri, forged) as conn, conn.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchall()
        summary["forged"] = None
    except Exception as error:
        summary["forged"] = first_line(error)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
