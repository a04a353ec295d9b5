-- Units on the shelves of each fridge right now, and how many SKUs are
-- empty or below zero (a data-quality signal).
SELECT fridge_id,
       SUM(on_hand) AS units,
       COUNT(*) AS skus,
       SUM(CASE WHEN on_hand <= 0 THEN 1 ELSE 0 END) AS empty_skus
FROM inventory_now
GROUP BY fridge_id
ORDER BY fridge_id
