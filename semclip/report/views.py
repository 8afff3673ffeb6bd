"""The yield report's figures as named DuckDB table macros, over the ``predictions`` view.

Every figure of ``semclip report`` comes from one of these macros, and the SQL text is the
public contract (docs/pipeline.md shows it): a user's own DuckDB session, after
:func:`semclip.io.query.connect` (or the plain-SQL ``predictions`` view of the docs) and
:func:`register_report_views`, gets the very numbers the report prints. pandas users call
``con.sql("SELECT * FROM defect_pareto(NULL, NULL)").df()``.

Dates are ``first_date, last_date`` (both included; ``NULL`` = unbounded) so one connection
serves a report's range and its trend window. Rows with an ``error`` have no class and are
left out of the class figures; the normal class ``good`` is left out of the Pareto (it is not
a defect) but counted everywhere else.
"""

from __future__ import annotations

import duckdb

__all__ = ["NORMAL_CLASS", "REPORT_MACROS", "REPORT_VIEWS_SQL", "register_report_views"]

NORMAL_CLASS = "good"

# name -> CREATE statement; the order matters (review_share reads review_reasons).
REPORT_MACROS: dict[str, str] = {
    "report_rows": """
CREATE OR REPLACE MACRO report_rows(first_date, last_date) AS TABLE
    SELECT * FROM predictions
    WHERE "date" >= coalesce(CAST(first_date AS DATE), DATE '0001-01-01')
      AND "date" <= coalesce(CAST(last_date AS DATE), DATE '9999-12-31')
""",
    "defect_pareto": """
CREATE OR REPLACE MACRO defect_pareto(first_date, last_date) AS TABLE
    SELECT predicted_class, n,
           n / sum(n) OVER () AS share,
           sum(n) OVER (ORDER BY n DESC, predicted_class
                        ROWS UNBOUNDED PRECEDING) / sum(n) OVER () AS cumulative_share
    FROM (SELECT predicted_class, count(*) AS n
          FROM report_rows(first_date, last_date)
          WHERE error IS NULL AND predicted_class <> 'good'
          GROUP BY predicted_class)
    ORDER BY n DESC, predicted_class
""",
    "defect_pareto_by_lot": """
CREATE OR REPLACE MACRO defect_pareto_by_lot(first_date, last_date) AS TABLE
    SELECT lot_id, predicted_class, n,
           n / sum(n) OVER (PARTITION BY lot_id) AS share,
           sum(n) OVER (PARTITION BY lot_id ORDER BY n DESC, predicted_class
                        ROWS UNBOUNDED PRECEDING)
               / sum(n) OVER (PARTITION BY lot_id) AS cumulative_share
    FROM (SELECT coalesce(lot_id, '?') AS lot_id, predicted_class, count(*) AS n
          FROM report_rows(first_date, last_date)
          WHERE error IS NULL AND predicted_class <> 'good'
          GROUP BY ALL)
    ORDER BY lot_id, n DESC, predicted_class
""",
    "defect_counts": """
CREATE OR REPLACE MACRO defect_counts(first_date, last_date) AS TABLE
    SELECT coalesce(lot_id, '?') AS lot_id, coalesce(wafer_id, '?') AS wafer_id,
           coalesce(predicted_class, '(error)') AS predicted_class, count(*) AS n
    FROM report_rows(first_date, last_date)
    GROUP BY ALL
    ORDER BY lot_id, wafer_id, predicted_class
""",
    "defect_density_trend": """
CREATE OR REPLACE MACRO defect_density_trend(last_date, nights) AS TABLE
    WITH rows AS (
        SELECT * FROM report_rows(CAST(last_date AS DATE) - (CAST(nights AS INTEGER) - 1),
                                  last_date)),
         per_night AS (
        SELECT "date", count(DISTINCT (coalesce(lot_id, '?'), coalesce(wafer_id, '?')))
                   AS wafers,
               count(*) AS images
        FROM rows GROUP BY "date")
    SELECT r."date", r.predicted_class, count(*) AS n, any_value(p.wafers) AS wafers,
           count(*) / any_value(p.wafers) AS defects_per_wafer,
           count(*) / any_value(p.images) AS share_of_images
    FROM rows AS r JOIN per_night AS p USING ("date")
    WHERE r.error IS NULL AND r.predicted_class <> 'good'
    GROUP BY r."date", r.predicted_class
    ORDER BY r."date", r.predicted_class
""",
    "review_reasons": """
CREATE OR REPLACE MACRO review_reasons(first_date, last_date, min_probability, margin,
                                       class_codes := NULL) AS TABLE
    SELECT *,
           CASE WHEN error IS NOT NULL THEN 'error'
                WHEN top1_probability IS NULL THEN NULL
                WHEN class_codes IS NOT NULL AND klarf_classnumber IS NOT NULL
                     AND NOT list_contains(class_codes, CAST(klarf_classnumber AS BIGINT))
                     THEN 'unknown_klarf_code'
                WHEN (predicted_class = 'good') = (coalesce(defect_area_px, 0) > 0)
                     OR (needs_review AND top1_probability >= min_probability)
                     THEN 'mask_disagrees'
                WHEN margin IS NOT NULL AND top_margin < margin THEN 'small_margin'
                WHEN top1_probability < min_probability THEN 'low_confidence'
           END AS review_reason
    FROM (SELECT *,
                 list_sort(map_values(probabilities), 'DESC')[1] AS top1_probability,
                 list_sort(map_values(probabilities), 'DESC')[1]
                     - coalesce(list_sort(map_values(probabilities), 'DESC')[2], 0)
                     AS top_margin
          FROM report_rows(first_date, last_date))
""",
    "review_share": """
CREATE OR REPLACE MACRO review_share(first_date, last_date, min_probability, margin,
                                     class_codes := NULL) AS TABLE
    SELECT review_reason, count(*) AS n, count(*) / any_value(total) AS share
    FROM (SELECT review_reason, count(*) OVER () AS total
          FROM review_reasons(first_date, last_date, min_probability, margin,
                              class_codes := class_codes))
    WHERE review_reason IS NOT NULL
    GROUP BY review_reason
    ORDER BY n DESC, review_reason
""",
    "wafer_map_points": """
CREATE OR REPLACE MACRO wafer_map_points(first_date, last_date) AS TABLE
    SELECT coalesce(lot_id, '?') AS lot_id, coalesce(wafer_id, '?') AS wafer_id,
           predicted_class, image_uri, die_x_index, die_y_index, x_rel_um, y_rel_um,
           die_pitch_x_um, die_pitch_y_um,
           die_x_index + coalesce(x_rel_um / die_pitch_x_um, 0.5) AS die_x,
           die_y_index + coalesce(y_rel_um / die_pitch_y_um, 0.5) AS die_y
    FROM report_rows(first_date, last_date)
    WHERE error IS NULL AND die_x_index IS NOT NULL AND die_y_index IS NOT NULL
    ORDER BY lot_id, wafer_id, image_uri
""",
}

REPORT_VIEWS_SQL = ";\n".join(sql.strip() for sql in REPORT_MACROS.values()) + ";\n"


def register_report_views(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """Create the report macros on ``con``, which must already have a ``predictions`` view.

    Returns ``con``. The macros read ``predictions`` when queried, not when created, so a
    later ``CREATE OR REPLACE VIEW predictions`` (say, restricted to some lots) applies.
    """
    for sql in REPORT_MACROS.values():
        con.execute(sql)
    return con
