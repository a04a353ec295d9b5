-- Accepted events per day and kind: the shape of a day's traffic.
SELECT dt, kind, COUNT(*) AS events
FROM events
GROUP BY dt, kind
ORDER BY dt, kind
