-- Restock lines computed from the events alone, the way a team without a
-- streaming engine would: the whole history is read again each time. The
-- rules are DOMAIN.md's (latest count plus later movements, the 7-day sales
-- window, the latest planogram, a lead time of 2 days), without cold-chain
-- write-offs. `cargo bench --bench compare` times it against coldstream's
-- restock view as the history grows, and checks both give the same lines.
WITH counts AS (
    SELECT fridge_id, sku, qty AS counted, event_time AS counted_at
    FROM (
        SELECT fridge_id, sku, qty, event_time,
               ROW_NUMBER() OVER (PARTITION BY fridge_id, sku ORDER BY event_time DESC, seq DESC) AS latest
        FROM events
        WHERE kind = 'stock_counted'
    )
    WHERE latest = 1
),
movements AS (
    SELECT e.fridge_id, e.sku, CASE e.kind WHEN 'item_taken' THEN -e.qty ELSE e.qty END AS delta
    FROM events e
    LEFT JOIN counts c ON e.fridge_id = c.fridge_id AND e.sku = c.sku
    WHERE e.kind IN ('item_taken', 'item_returned', 'restock_delivered')
      AND (c.counted_at IS NULL OR e.event_time > c.counted_at)
),
inventory AS (
    SELECT fridge_id, sku, COALESCE(MAX(counted), 0) + COALESCE(SUM(delta), 0) AS on_hand
    FROM (
        SELECT fridge_id, sku, counted, CAST(NULL AS BIGINT) AS delta FROM counts
        UNION ALL
        SELECT fridge_id, sku, CAST(NULL AS BIGINT), delta FROM movements
    )
    GROUP BY fridge_id, sku
),
latest AS (
    SELECT source_id AS fridge_id, MAX(event_time) AS latest
    FROM events
    WHERE kind NOT IN ('price_changed', 'fridge_registered', 'planogram_set')
    GROUP BY source_id
),
sales AS (
    SELECT e.fridge_id, e.sku, SUM(CASE e.kind WHEN 'item_taken' THEN e.qty ELSE -e.qty END) AS units
    FROM events e
    JOIN latest l ON e.source_id = l.fridge_id
    WHERE e.kind IN ('item_taken', 'item_returned')
      AND e.event_time > l.latest - INTERVAL '168 hours'
    GROUP BY e.fridge_id, e.sku
),
planogram AS (
    SELECT fridge_id, sku, par, "min"
    FROM (
        SELECT fridge_id, sku, par, "min",
               ROW_NUMBER() OVER (PARTITION BY fridge_id, sku ORDER BY event_time DESC, seq DESC) AS latest
        FROM events
        WHERE kind = 'planogram_set'
    )
    WHERE latest = 1 AND par > 0
)
SELECT p.fridge_id, p.sku, p.par - COALESCE(i.on_hand, 0) AS qty
FROM planogram p
LEFT JOIN inventory i ON p.fridge_id = i.fridge_id AND p.sku = i.sku
LEFT JOIN sales s ON p.fridge_id = s.fridge_id AND p.sku = s.sku
WHERE COALESCE(i.on_hand, 0) <= GREATEST(p."min", CAST(ceil(CAST(COALESCE(s.units, 0) * 2 AS DOUBLE) / 7.0) AS BIGINT))
  AND p.par - COALESCE(i.on_hand, 0) > 0
ORDER BY p.fridge_id, p.sku
