-- Units sold per SKU (taken minus returned), best sellers first.
SELECT sku,
       SUM(CASE WHEN kind = 'item_taken' THEN qty ELSE -qty END) AS units_sold
FROM events
WHERE kind IN ('item_taken', 'item_returned')
GROUP BY sku
ORDER BY units_sold DESC, sku
