//! coldstream's built-in reorder point, `max(min, ceil(sales_7d / 7 ×
//! lead_time_days))`, as a UDF: with it as the restock policy, the restock
//! orders must be byte for byte the built-in policy's.

use arroyo_udf_plugin::udf;

#[udf]
fn builtin_reorder_point(par: i64, min: i64, on_hand: i64, sales_7d: i64, lead_time_days: i64) -> i64 {
    let _ = (par, on_hand);
    let demand = -(-(sales_7d * lead_time_days)).div_euclid(7);
    min.max(demand)
}
