//! The Flight SQL endpoint: the tables of `coldstream query` for the tools
//! analysts already use (DBeaver, Superset, Grafana, ADBC from Python),
//! over Arrow Flight SQL.
//!
//! Every call carries an analyst's bearer token (`coldstream token
//! --analyst NAME`); a fridge's or the back office's token is refused. A
//! statement is planned on a session of its own over the data directory's
//! Parquet files, as they are when it is planned, checked to be read-only
//! exactly as `coldstream query` checks it, and streamed as Arrow batches
//! as DataFusion produces them: no result is held whole. Each query runs
//! under a memory limit of its own (an operator that needs more fails the
//! query, alone; nothing spills to disk), a timeout that covers planning, waiting for a slot and
//! streaming, and a cap on the queries running at once; the endpoint runs
//! on threads of its own, beside the gateway's and the workers'.
//!
//! Browsing: `GetCatalogs`, `GetDbSchemas`, `GetTables` (with each table's
//! schema), `GetTableTypes`, `GetSqlInfo`. Prepared statements take
//! positional parameters (`$1`, `$2`, …) bound with `DoPut`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::writer::IpcWriteOptions;
use arrow::record_batch::RecordBatch;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult,
    Any, CommandGetCatalogs, CommandGetDbSchemas, CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables,
    CommandPreparedStatementQuery, CommandStatementQuery, DoPutPreparedStatementResult, ProstMessageExt, SqlInfo,
    TicketStatementQuery,
};
use arrow_flight::{
    FlightData, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, IpcMessage,
    SchemaAsIpc, Ticket,
};
use coldstream_sources::auth::{Principal, Tokens, Verified, bearer, now_s};
use datafusion::common::ScalarValue;
use datafusion::error::DataFusionError;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tonic::{Request, Response, Status, Streaming};

/// The catalog and schema every table is in, as `coldstream query` names them.
const CATALOG: &str = "datafusion";
const SCHEMA: &str = "public";

/// How the endpoint is bounded.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Memory one query's operators may hold (sorts, aggregations, joins).
    pub memory_bytes: usize,
    /// From the statement's arrival to its last batch, waiting for a slot included.
    pub timeout: Duration,
    /// Queries running at once; more wait for a slot within their timeout.
    pub concurrent: usize,
}

/// The endpoint's settings.
#[derive(Clone, Debug)]
pub struct FlightSqlConfig {
    /// The address to listen on.
    pub listen: SocketAddr,
    /// The data directories whose tables it serves.
    pub data_dirs: Vec<PathBuf>,
    /// Checks analysts' tokens.
    pub tokens: Tokens,
    /// TLS, as on the gateway (its certificate and key).
    pub tls: Option<coldstream_sources::gateway::ServerTls>,
    /// Memory, time and concurrency.
    pub limits: Limits,
    /// UDFs callable from its SQL.
    pub udfs: Vec<Arc<crate::udf::LoadedUdf>>,
}

/// A running endpoint.
pub struct FlightSqlServer {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    /// Its own threads, so that a heavy query does not slow the gateway.
    runtime: Option<tokio::runtime::Runtime>,
}

impl FlightSqlServer {
    /// Binds `config.listen` and serves until dropped.
    pub fn start(config: FlightSqlConfig) -> Result<FlightSqlServer, std::io::Error> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("flight sql")
            .enable_all()
            .build()?;
        let listener = std::net::TcpListener::bind(config.listen)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let mut server = tonic::transport::Server::builder();
        if let Some(tls) = &config.tls {
            let settings = tonic::transport::ServerTlsConfig::new()
                .identity(tonic::transport::Identity::from_pem(&tls.cert, &tls.key));
            server = server.tls_config(settings).map_err(std::io::Error::other)?;
        }
        let service = FlightServiceServer::new(Endpoint::new(config));
        let (shutdown, stopped) = oneshot::channel::<()>();
        runtime.spawn(async move {
            let listener = match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => listener,
                Err(error) => {
                    tracing::error!(%error, "the Flight SQL endpoint cannot listen");
                    return;
                }
            };
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|accepted| {
                accepted.inspect(|stream| {
                    let _ = stream.set_nodelay(true);
                })
            });
            let served = server
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stopped.await;
                })
                .await;
            if let Err(error) = served {
                tracing::error!(%error, "the Flight SQL endpoint stopped");
            }
        });
        Ok(FlightSqlServer { addr, shutdown: Some(shutdown), runtime: Some(runtime) })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Dropping the endpoint stops it: it takes no more calls, and running
/// queries end.
impl Drop for FlightSqlServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Prepared statements open at once, over every analyst: a client that
/// never closes its own cannot grow the endpoint's memory without bound.
const MAX_PREPARED: usize = 4096;

/// A prepared statement: its text, who prepared it, and the parameters bound.
struct Prepared {
    sql: String,
    analyst: String,
    parameters: Vec<ScalarValue>,
}

/// The Flight SQL service.
struct Endpoint {
    data_dirs: Vec<PathBuf>,
    udfs: Vec<Arc<crate::udf::LoadedUdf>>,
    tokens: Tokens,
    limits: Limits,
    slots: Arc<Semaphore>,
    prepared: Mutex<HashMap<Vec<u8>, Prepared>>,
    info: SqlInfoData,
}

type BatchStream = Pin<Box<dyn Stream<Item = Result<FlightData, Status>> + Send + 'static>>;

fn sql_info() -> SqlInfoData {
    let mut info = SqlInfoDataBuilder::new();
    info.append(SqlInfo::FlightSqlServerName, "coldstream");
    info.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    info.append(SqlInfo::FlightSqlServerArrowVersion, "59");
    info.append(SqlInfo::FlightSqlServerReadOnly, true);
    info.append(SqlInfo::FlightSqlServerSql, true);
    info.append(SqlInfo::FlightSqlServerSubstrait, false);
    info.append(SqlInfo::FlightSqlServerTransaction, 0i32);
    info.append(SqlInfo::FlightSqlServerCancel, false);
    info.append(SqlInfo::FlightSqlServerStatementTimeout, 0i32);
    info.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    info.build().expect("the server's SQL info is well-formed")
}

/// A DataFusion error as a gRPC status, on one line.
fn status(error: DataFusionError) -> Status {
    let line = crate::query::one_line(&error);
    match error {
        DataFusionError::ResourcesExhausted(_) => Status::resource_exhausted(line),
        DataFusionError::Plan(_) | DataFusionError::SQL(..) | DataFusionError::SchemaError(..) => {
            Status::invalid_argument(line)
        }
        _ => Status::internal(line),
    }
}

fn arrow_status(error: impl std::fmt::Display) -> Status {
    Status::internal(error.to_string())
}

/// `schema` as the IPC bytes Flight SQL carries schemas in.
fn ipc_schema(schema: &Schema) -> Result<Vec<u8>, Status> {
    let IpcMessage(bytes) = SchemaAsIpc::new(schema, &IpcWriteOptions::default()).try_into().map_err(arrow_status)?;
    Ok(bytes.to_vec())
}

/// A flight of one endpoint whose ticket is `ticket`.
fn flight_info(schema: &Schema, ticket: Any, descriptor: FlightDescriptor) -> Result<FlightInfo, Status> {
    let endpoint = FlightEndpoint::new().with_ticket(Ticket::new(ticket.encode_to_vec()));
    Ok(FlightInfo::new()
        .try_with_schema(schema)
        .map_err(arrow_status)?
        .with_endpoint(endpoint)
        .with_descriptor(descriptor))
}

/// One batch as a Flight stream.
fn one_batch(batch: RecordBatch) -> BatchStream {
    let stream = FlightDataEncoderBuilder::new()
        .with_schema(batch.schema())
        .build(futures::stream::once(async move { Ok(batch) }))
        .map_err(|e| Status::internal(e.to_string()));
    Box::pin(stream)
}

/// The parameter schema of a plan: `$1`, `$2`, … in order, typed where
/// DataFusion could infer it (Utf8 where it could not).
fn parameter_schema(plan: &LogicalPlan) -> Result<Schema, Status> {
    let mut types: Vec<(usize, DataType)> = plan
        .get_parameter_types()
        .map_err(status)?
        .into_iter()
        .map(|(id, data_type)| {
            let position = id.trim_start_matches('$').parse::<usize>().map_err(|_| {
                Status::invalid_argument(format!("parameter {id}: only positional parameters ($1, $2, …) are taken"))
            })?;
            Ok((position, data_type.unwrap_or(DataType::Utf8)))
        })
        .collect::<Result<_, Status>>()?;
    types.sort_by_key(|(position, _)| *position);
    Ok(Schema::new(
        types
            .into_iter()
            .map(|(position, data_type)| Field::new(format!("${position}"), data_type, true))
            .collect::<Vec<_>>(),
    ))
}

impl Endpoint {
    fn new(config: FlightSqlConfig) -> Endpoint {
        Endpoint {
            data_dirs: config.data_dirs,
            udfs: config.udfs,
            tokens: config.tokens,
            slots: Arc::new(Semaphore::new(config.limits.concurrent.max(1))),
            limits: config.limits,
            prepared: Mutex::new(HashMap::new()),
            info: sql_info(),
        }
    }

    /// The analyst a call's token names; any other caller is refused.
    fn analyst<T>(&self, request: &Request<T>) -> Result<String, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .ok_or_else(|| Status::unauthenticated("missing `authorization: Bearer <token>`"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(bearer)
            .ok_or_else(|| Status::unauthenticated("the authorization header is not `Bearer <token>`"))?;
        match self.tokens.verify(token, now_s()) {
            Ok(Verified::Principal(Principal::Analyst(name))) => Ok(name),
            Ok(Verified::Principal(other)) => Err(Status::permission_denied(format!(
                "{other} cannot query: issue an analyst's token with `coldstream token --analyst NAME`"
            ))),
            Ok(_) => Err(Status::permission_denied("only an analyst's token can query")),
            Err(refusal) => Err(Status::unauthenticated(refusal.to_string())),
        }
    }

    /// A session over the data directories with this endpoint's memory limit.
    async fn session(&self) -> Result<SessionContext, Status> {
        // Nothing spills: a query that needs more memory fails, and no
        // analyst fills the data directory's disk.
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(self.limits.memory_bytes, 1.0)
            .with_disk_manager_builder(DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled))
            .build_arc()
            .map_err(status)?;
        let session = SessionContext::new_with_config_rt(SessionConfig::new(), runtime);
        crate::query::register_all(&session, &self.data_dirs).await.map_err(status)?;
        crate::query::register_udfs(&session, &self.udfs);
        Ok(session)
    }

    /// Plans `sql` on a fresh session, refusing anything but a read.
    async fn plan(&self, sql: &str) -> Result<(SessionContext, LogicalPlan), Status> {
        let session = self.session().await?;
        let plan = crate::query::plan(&session, sql).await.map_err(status)?;
        Ok((session, plan))
    }

    /// Runs `sql` with `parameters`, streamed within the limits.
    async fn execute(&self, sql: &str, parameters: Vec<ScalarValue>) -> Result<BatchStream, Status> {
        let deadline = tokio::time::Instant::now() + self.limits.timeout;
        let slot = tokio::time::timeout_at(deadline, Arc::clone(&self.slots).acquire_owned())
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!(
                    "no query slot freed within flight_sql.timeout_seconds ({} s); {} queries run at once",
                    self.limits.timeout.as_secs(),
                    self.limits.concurrent
                ))
            })?
            .map_err(|_| Status::unavailable("the endpoint is stopping"))?;
        let timeout = self.limits.timeout;
        let planned = async {
            let (session, plan) = self.plan(sql).await?;
            let mut frame = session.execute_logical_plan(plan).await.map_err(status)?;
            if !parameters.is_empty() {
                frame = frame.with_param_values(parameters).map_err(status)?;
            }
            frame.execute_stream().await.map_err(status)
        };
        let batches = tokio::time::timeout_at(deadline, planned).await.map_err(|_| past_deadline(timeout))??;
        let schema = batches.schema();
        let bounded = bounded(batches, slot, deadline, timeout);
        let stream = FlightDataEncoderBuilder::new().with_schema(schema).build(bounded).map_err(|error| match error {
            FlightError::Tonic(status) => *status,
            other => Status::internal(other.to_string()),
        });
        Ok(Box::pin(stream))
    }

    async fn statement_info(&self, sql: &str, ticket: Any, descriptor: FlightDescriptor) -> Result<FlightInfo, Status> {
        let (_, plan) = self.plan(sql).await?;
        let schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
        flight_info(&schema, ticket, descriptor)
    }

    fn prepared(&self, handle: &[u8], analyst: &str) -> Result<(String, Vec<ScalarValue>), Status> {
        let prepared = self.prepared.lock().expect("the prepared statements are never poisoned");
        match prepared.get(handle) {
            Some(statement) if statement.analyst == analyst => {
                Ok((statement.sql.clone(), statement.parameters.clone()))
            }
            _ => Err(Status::not_found("no such prepared statement (closed, or prepared by another analyst)")),
        }
    }

    /// Every table with its schema, as `GetTables` lists them.
    async fn tables(&self) -> Result<Vec<(String, &'static str, SchemaRef)>, Status> {
        let session = self.session().await?;
        let schema = session
            .catalog(CATALOG)
            .and_then(|catalog| catalog.schema(SCHEMA))
            .ok_or_else(|| Status::internal("the default schema is missing"))?;
        let mut tables = Vec::new();
        let mut names = schema.table_names();
        names.sort();
        for name in names {
            if let Some(table) = schema.table(&name).await.map_err(status)? {
                let kind = match table.table_type() {
                    datafusion::datasource::TableType::View => "VIEW",
                    _ => "TABLE",
                };
                tables.push((name, kind, table.schema()));
            }
        }
        Ok(tables)
    }
}

fn past_deadline(timeout: Duration) -> Status {
    Status::deadline_exceeded(format!("the query ran past flight_sql.timeout_seconds ({} s)", timeout.as_secs()))
}

/// `batches` until they end or `deadline` passes, holding the query's slot
/// until then.
fn bounded(
    batches: SendableRecordBatchStream,
    slot: OwnedSemaphorePermit,
    deadline: tokio::time::Instant,
    timeout: Duration,
) -> impl Stream<Item = Result<RecordBatch, FlightError>> + Send + 'static {
    futures::stream::unfold(Some((batches, slot)), move |state| async move {
        let (mut batches, slot) = state?;
        match tokio::time::timeout_at(deadline, batches.next()).await {
            Ok(Some(Ok(batch))) => Some((Ok(batch), Some((batches, slot)))),
            Ok(Some(Err(error))) => Some((Err(FlightError::Tonic(Box::new(status(error)))), None)),
            Ok(None) => None,
            Err(_) => Some((Err(FlightError::Tonic(Box::new(past_deadline(timeout)))), None)),
        }
    })
}

#[tonic::async_trait]
impl FlightSqlService for Endpoint {
    type FlightService = Endpoint;

    /// Checks the bearer token and hands it back, for clients that shake
    /// hands before their first call.
    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>, Status> {
        self.analyst(&request)?;
        let header = request.metadata().get("authorization").cloned();
        let reply = HandshakeResponse { protocol_version: 0, payload: Default::default() };
        let stream: Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>> =
            Box::pin(futures::stream::once(async move { Ok(reply) }));
        let mut response = Response::new(stream);
        if let Some(header) = header {
            response.metadata_mut().insert("authorization", header);
        }
        Ok(response)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.analyst(&request)?;
        let ticket = TicketStatementQuery { statement_handle: query.query.clone().into_bytes().into() };
        let info = self.statement_info(&query.query, ticket.as_any(), request.into_inner()).await?;
        Ok(Response::new(info))
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.analyst(&request)?;
        let sql = String::from_utf8(ticket.statement_handle.to_vec())
            .map_err(|_| Status::invalid_argument("the ticket is not a statement"))?;
        Ok(Response::new(self.execute(&sql, Vec::new()).await?))
    }

    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let analyst = self.analyst(&request)?;
        let (sql, _) = self.prepared(&query.prepared_statement_handle, &analyst)?;
        let info = self.statement_info(&sql, query.as_any(), request.into_inner()).await?;
        Ok(Response::new(info))
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let analyst = self.analyst(&request)?;
        let (sql, parameters) = self.prepared(&query.prepared_statement_handle, &analyst)?;
        Ok(Response::new(self.execute(&sql, parameters).await?))
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let analyst = self.analyst(&request)?;
        let (_, plan) = self.plan(&query.query).await?;
        let dataset = ipc_schema(plan.schema().as_arrow())?;
        let parameters = ipc_schema(&parameter_schema(&plan)?)?;
        let handle: [u8; 16] = rand::random();
        let mut prepared = self.prepared.lock().expect("the prepared statements are never poisoned");
        if prepared.len() >= MAX_PREPARED {
            return Err(Status::resource_exhausted(format!(
                "{MAX_PREPARED} prepared statements are open; close some (ClosePreparedStatement)"
            )));
        }
        prepared.insert(handle.to_vec(), Prepared { sql: query.query, analyst, parameters: Vec::new() });
        drop(prepared);
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle.to_vec().into(),
            dataset_schema: dataset.into(),
            parameter_schema: parameters.into(),
        })
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let analyst = self.analyst(&request)?;
        self.prepared(&query.prepared_statement_handle, &analyst)?;
        let data = request.into_inner().map_err(FlightError::from);
        let batches: Vec<RecordBatch> = FlightRecordBatchStream::new_from_flight_data(data)
            .try_collect()
            .await
            .map_err(|e| Status::invalid_argument(format!("the parameters: {e}")))?;
        let mut parameters = Vec::new();
        if let Some(batch) = batches.iter().find(|b| b.num_rows() > 0) {
            if batch.num_rows() != 1 {
                return Err(Status::invalid_argument("bind one row of parameters at a time"));
            }
            for column in batch.columns() {
                parameters.push(ScalarValue::try_from_array(column, 0).map_err(status)?);
            }
        }
        let mut prepared = self.prepared.lock().expect("the prepared statements are never poisoned");
        if let Some(statement) = prepared.get_mut(query.prepared_statement_handle.as_ref()) {
            statement.parameters = parameters;
        }
        Ok(DoPutPreparedStatementResult { prepared_statement_handle: Some(query.prepared_statement_handle) })
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<(), Status> {
        let analyst = self.analyst(&request)?;
        let mut prepared = self.prepared.lock().expect("the prepared statements are never poisoned");
        if prepared.get(query.prepared_statement_handle.as_ref()).is_some_and(|s| s.analyst == analyst) {
            prepared.remove(query.prepared_statement_handle.as_ref());
        }
        Ok(())
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.analyst(&request)?;
        let schema = query.into_builder().schema();
        Ok(Response::new(flight_info(&schema, query.as_any(), request.into_inner())?))
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.analyst(&request)?;
        let mut builder = query.into_builder();
        builder.append(CATALOG);
        Ok(Response::new(one_batch(builder.build().map_err(arrow_status)?)))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.analyst(&request)?;
        let schema = query.clone().into_builder().schema();
        Ok(Response::new(flight_info(&schema, query.as_any(), request.into_inner())?))
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.analyst(&request)?;
        let mut builder = query.into_builder();
        builder.append(CATALOG, SCHEMA);
        Ok(Response::new(one_batch(builder.build().map_err(arrow_status)?)))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.analyst(&request)?;
        let schema = query.clone().into_builder().schema();
        Ok(Response::new(flight_info(&schema, query.as_any(), request.into_inner())?))
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.analyst(&request)?;
        let tables = self.tables().await?;
        let mut builder = query.into_builder();
        for (name, kind, schema) in tables {
            builder.append(CATALOG, SCHEMA, name, kind, &schema).map_err(arrow_status)?;
        }
        Ok(Response::new(one_batch(builder.build().map_err(arrow_status)?)))
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.analyst(&request)?;
        let schema = query.into_builder().schema();
        Ok(Response::new(flight_info(&schema, query.as_any(), request.into_inner())?))
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.analyst(&request)?;
        let mut builder = query.into_builder();
        builder.append("TABLE");
        builder.append("VIEW");
        Ok(Response::new(one_batch(builder.build().map_err(arrow_status)?)))
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.analyst(&request)?;
        let schema = query.clone().into_builder(&self.info).schema();
        Ok(Response::new(flight_info(&schema, query.as_any(), request.into_inner())?))
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.analyst(&request)?;
        let batch = query.into_builder(&self.info).build().map_err(arrow_status)?;
        Ok(Response::new(one_batch(batch)))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}
