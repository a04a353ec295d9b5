-- Closed sessions whose payment does not match the basket: charged too
-- little or too much, declined, or not priceable.
SELECT fridge_id,
       session_id,
       status,
       expected_cents,
       captured_cents,
       captured_cents - expected_cents AS difference_cents,
       closed_at
FROM sessions_now
WHERE status IN ('undercharged', 'overcharged', 'unpaid', 'unpriced')
ORDER BY closed_at, fridge_id, session_id
