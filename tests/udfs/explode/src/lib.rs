//! `explode(x)`: `x`, but panics on any `x` above 2, to show that a UDF's
//! panic fails the query and not the server.

use arroyo_udf_plugin::udf;

#[udf]
fn explode(x: i64) -> i64 {
    if x > 2 {
        panic!("explode({x}): above 2");
    }
    x
}
