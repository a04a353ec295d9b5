-- Every open restock order with its lines: what procurement should deliver.
SELECT order_id,
       fridge_id,
       opened_at,
       sku,
       qty
FROM restock_orders_now
ORDER BY fridge_id, order_id, sku
