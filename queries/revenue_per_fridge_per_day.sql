-- Captured revenue per fridge and UTC day, with the sessions paid and the
-- units they took.
SELECT fridge_id,
       CAST(date_trunc('day', hour) AS DATE) AS day,
       SUM(captured_cents) AS captured_cents,
       SUM(sessions) AS sessions,
       SUM(units) AS units
FROM revenue_now
GROUP BY fridge_id, CAST(date_trunc('day', hour) AS DATE)
ORDER BY fridge_id, day
