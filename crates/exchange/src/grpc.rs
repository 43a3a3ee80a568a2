//! The gRPC edge of `ExchangeService`: authenticate, then hand over to [`Exchange`], which
//! checks who may do what.

use std::sync::Arc;

use futures::StreamExt;
use tandem_auth::{Authenticator, Caller};
use tandem_proto::v1::{self as pb, exchange_service_server::ExchangeService};
use tonic::{Request, Response, Status, Streaming};

use crate::{Exchange, ExchangeError};

/// Most records one RecordActivities stream may carry: the answer lists one result per record,
/// and must stay well under a client's default 4 MiB message limit.
pub const MAX_STREAMED_ACTIVITIES: usize = 20_000;

pub struct ExchangeGrpc {
    exchange: Exchange,
    authenticator: Arc<Authenticator>,
}

impl ExchangeGrpc {
    pub fn new(exchange: Exchange, authenticator: Arc<Authenticator>) -> Self {
        Self {
            exchange,
            authenticator,
        }
    }

    async fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        Ok(self.authenticator.authenticate(request.metadata()).await?)
    }
}

#[tonic::async_trait]
impl ExchangeService for ExchangeGrpc {
    async fn get_quote(
        &self,
        request: Request<pb::GetQuoteRequest>,
    ) -> Result<Response<pb::GetQuoteResponse>, Status> {
        let caller = self.caller(&request).await?;
        let quote = self
            .exchange
            .get_quote(&caller, request.into_inner())
            .await?;
        Ok(Response::new(pb::GetQuoteResponse { quote: Some(quote) }))
    }

    async fn execute_conversion(
        &self,
        request: Request<pb::ExecuteConversionRequest>,
    ) -> Result<Response<pb::ExecuteConversionResponse>, Status> {
        let caller = self.caller(&request).await?;
        let (conversion, replayed) = self
            .exchange
            .execute_conversion(&caller, request.into_inner())
            .await?;
        Ok(Response::new(pb::ExecuteConversionResponse {
            conversion: Some(conversion),
            replayed,
        }))
    }

    async fn get_conversion(
        &self,
        request: Request<pb::GetConversionRequest>,
    ) -> Result<Response<pb::GetConversionResponse>, Status> {
        let caller = self.caller(&request).await?;
        let conversion = self
            .exchange
            .get_conversion(&caller, &request.into_inner().conversion_id)
            .await?;
        Ok(Response::new(pb::GetConversionResponse {
            conversion: Some(conversion),
        }))
    }

    async fn list_conversions(
        &self,
        request: Request<pb::ListConversionsRequest>,
    ) -> Result<Response<pb::ListConversionsResponse>, Status> {
        let caller = self.caller(&request).await?;
        Ok(Response::new(
            self.exchange
                .list_conversions(&caller, request.into_inner())
                .await?,
        ))
    }

    async fn reverse_conversion(
        &self,
        request: Request<pb::ReverseConversionRequest>,
    ) -> Result<Response<pb::ReverseConversionResponse>, Status> {
        let caller = self.caller(&request).await?;
        let conversion = self
            .exchange
            .reverse_conversion(&caller, request.into_inner())
            .await?;
        Ok(Response::new(pb::ReverseConversionResponse {
            conversion: Some(conversion),
        }))
    }

    async fn record_activity(
        &self,
        request: Request<pb::RecordActivityRequest>,
    ) -> Result<Response<pb::RecordActivityResponse>, Status> {
        let caller = self.caller(&request).await?;
        let (activity, replayed) = self
            .exchange
            .record_activity(&caller, request.into_inner())
            .await?;
        Ok(Response::new(pb::RecordActivityResponse {
            activity: Some(activity),
            replayed,
        }))
    }

    async fn record_activities(
        &self,
        request: Request<Streaming<pb::RecordActivitiesRequest>>,
    ) -> Result<Response<pb::RecordActivitiesResponse>, Status> {
        let caller = self.caller(&request).await?;
        // Refused at the call, before a message is read: only a partner reports activities.
        if caller.role() != tandem_auth::Role::Partner {
            return Err(ExchangeError::PermissionDenied(
                "only a partner reports its members' activities",
            )
            .into());
        }
        let mut stream = request.into_inner();
        let mut activities = Vec::new();
        while let Some(message) = stream.next().await {
            let message = message?;
            if activities.len() == MAX_STREAMED_ACTIVITIES {
                return Err(ExchangeError::TooManyActivities(MAX_STREAMED_ACTIVITIES).into());
            }
            activities.push(message.activity.unwrap_or_default());
        }
        Ok(Response::new(
            self.exchange.record_activities(&caller, activities).await?,
        ))
    }

    async fn get_activity(
        &self,
        request: Request<pb::GetActivityRequest>,
    ) -> Result<Response<pb::GetActivityResponse>, Status> {
        let caller = self.caller(&request).await?;
        let activity = self
            .exchange
            .get_activity(&caller, &request.into_inner().activity_id)
            .await?;
        Ok(Response::new(pb::GetActivityResponse {
            activity: Some(activity),
        }))
    }

    async fn reverse_activity(
        &self,
        request: Request<pb::ReverseActivityRequest>,
    ) -> Result<Response<pb::ReverseActivityResponse>, Status> {
        let caller = self.caller(&request).await?;
        let activity = self
            .exchange
            .reverse_activity(&caller, request.into_inner())
            .await?;
        Ok(Response::new(pb::ReverseActivityResponse {
            activity: Some(activity),
        }))
    }
}
