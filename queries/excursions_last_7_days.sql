-- Cold-chain excursions that started in the 7 days up to the newest event
-- in the archive, longest first.
SELECT fridge_id,
       start,
       "end",
       CAST(("end" - start) AS VARCHAR) AS lasted,
       max_temperature_c
FROM excursions_now
WHERE start > (SELECT MAX(event_time) FROM events) - INTERVAL '7 days'
ORDER BY "end" - start DESC, fridge_id, start
