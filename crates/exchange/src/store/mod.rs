//! The exchange's SQL, a module per table family, beside the rows it reads. (Moving the rest of
//! the exchange's statements here, from `conversions.rs`, `earn.rs` and `writes.rs`, is under
//! way; what is here is the listing of conversions.)

mod conversion_list;

pub(crate) use conversion_list::{ConversionFilter, list_conversions, quotes_by_id};
