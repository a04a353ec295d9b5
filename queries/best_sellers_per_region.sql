-- The three best-selling SKUs of each region over the last 7 days (each
-- fridge's region from its latest registration).
WITH region_of AS (
    SELECT fridge_id, region
    FROM (
        SELECT fridge_id,
               region,
               ROW_NUMBER() OVER (PARTITION BY fridge_id ORDER BY event_time DESC, seq DESC) AS newest
        FROM events
        WHERE kind = 'fridge_registered'
    ) registrations
    WHERE newest = 1
),
sold AS (
    SELECT r.region, s.sku, SUM(s.units) AS units
    FROM sales_7d_now s
    JOIN region_of r ON r.fridge_id = s.fridge_id
    GROUP BY r.region, s.sku
)
SELECT region, sku, units, rank
FROM (
    SELECT region, sku, units, RANK() OVER (PARTITION BY region ORDER BY units DESC) AS rank
    FROM sold
) ranked
WHERE rank <= 3
ORDER BY region, rank, sku
