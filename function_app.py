"""The Azure Functions app: routes of the custom SMS channel, each one call deep."""

import azure.functions as func

from channel import http
from channel.logs import add_dimensions, quiet_libraries

quiet_libraries()
add_dimensions()

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


@app.function_name("outbound")
@app.route(route="outbound", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def outbound(req: func.HttpRequest) -> func.HttpResponse:
    """Send one SMS for the Dataverse custom API plugin."""
    return http.outbound(req)


@app.function_name("delivery_report")
@app.route(
    route="delivery-report/{provider}",
    methods=["POST", "OPTIONS"],
    auth_level=func.AuthLevel.ANONYMOUS,
)
def delivery_report(req: func.HttpRequest) -> func.HttpResponse:
    """Receive a provider's delivery report (authenticated by the app itself)."""
    return http.delivery_report(req)


@app.function_name("inbound")
@app.route(
    route="inbound/{provider}", methods=["POST", "OPTIONS"], auth_level=func.AuthLevel.ANONYMOUS
)
def inbound(req: func.HttpRequest) -> func.HttpResponse:
    """Receive a customer's reply (authenticated by the app itself)."""
    return http.inbound(req)


@app.function_name("health")
@app.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    """Report configuration and readiness."""
    return http.health(req)


@app.function_name("forward_pending")
@app.timer_trigger(
    schedule="0 */1 * * * *", arg_name="timer", run_on_startup=False, use_monitor=False
)
def forward_pending(timer: func.TimerRequest) -> None:
    """Forward to Dataverse what could not be forwarded at once; expire old records."""
    # Imported here: the Dataverse client and azure-core are not on an outbound
    # request's cold path.
    from channel import forwarding

    forwarding.forward_pending()
