-- Alerts raised now, by type and fridge: negative stock (with the SKU)
-- and cold-chain excursions (with the start of the run).
SELECT type, fridge_id, COALESCE(sku, '') AS sku, excursion_start
FROM alerts_now
ORDER BY type, fridge_id, sku, excursion_start
