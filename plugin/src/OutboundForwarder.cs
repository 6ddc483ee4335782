// The outbound custom API's plugin: forwards `payload` to the Function App's /api/outbound
// and copies its answer into `response`. Register it on the custom API's message as a
// PostOperation (stage 40) synchronous step: a main-operation plugin of a custom API gets no
// configuration (Power Apps docs, "Custom API", known issues).
//   unsecure configuration: https://<app>.azurewebsites.net/api/outbound
//   secure configuration:   the function key (only system administrators can read it)
// Written for .NET Framework 4.6.2 and C# 7; no dependency beyond Microsoft.Xrm.Sdk.
using System;
using System.Globalization;
using System.Net.Http;
using System.Text;
using System.Threading.Tasks;
using Microsoft.Xrm.Sdk;

namespace SmsChannel.Plugin
{
    /// <summary>Posts the custom API's payload unchanged to the channel and returns its reply.</summary>
    public sealed class OutboundForwarder : IPlugin
    {
        /// <summary>Within the sandbox's 2 minutes; the channel answers within its 20 s budget.</summary>
        private static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(30);

        private const string PayloadParameter = "payload";
        private const string ResponseProperty = "response";

        // Plugin instances are cached and shared between threads: only read-only state here.
        private readonly Uri _url;
        private readonly string _key;
        private readonly TimeSpan _timeout;
        private readonly string _configurationProblem;

        /// <summary>The constructor Dataverse calls with the step's two configuration strings.</summary>
        public OutboundForwarder(string unsecureConfiguration, string secureConfiguration)
            : this(unsecureConfiguration, secureConfiguration, DefaultTimeout)
        {
        }

        /// <summary>For tests compiled into the same assembly: a shorter timeout.</summary>
        internal OutboundForwarder(string unsecureConfiguration, string secureConfiguration, TimeSpan timeout)
        {
            _timeout = timeout;
            var url = (unsecureConfiguration ?? string.Empty).Trim();
            _key = (secureConfiguration ?? string.Empty).Trim();
            Uri parsed;
            if (!Uri.TryCreate(url, UriKind.Absolute, out parsed)
                || (parsed.Scheme != Uri.UriSchemeHttps && parsed.Scheme != Uri.UriSchemeHttp))
            {
                // Thrown from Execute, not here: Dataverse reports constructor failures poorly.
                _configurationProblem = "The step's unsecure configuration must be the absolute URL of the "
                    + "channel's outbound function, e.g. https://<app>.azurewebsites.net/api/outbound.";
            }
            else if (_key.Length == 0)
            {
                _configurationProblem = "The step's secure configuration must hold the outbound function's key.";
            }
            _url = parsed;
        }

        /// <summary>Forwards the payload; throws InvalidPluginExecutionException unless the channel answered 2xx.</summary>
        public void Execute(IServiceProvider serviceProvider)
        {
            if (serviceProvider == null)
            {
                throw new ArgumentNullException("serviceProvider");
            }
            var context = (IPluginExecutionContext)serviceProvider.GetService(typeof(IPluginExecutionContext));
            var tracing = (ITracingService)serviceProvider.GetService(typeof(ITracingService));
            if (_configurationProblem != null)
            {
                throw new InvalidPluginExecutionException(_configurationProblem);
            }
            var payload = context.InputParameters.Contains(PayloadParameter)
                ? context.InputParameters[PayloadParameter] as string
                : null;
            if (payload == null)
            {
                throw new InvalidPluginExecutionException("The input parameter 'payload' is missing or not a string.");
            }

            var started = DateTime.UtcNow;
            int status;
            string body;
            try
            {
                Send(payload, TraceParent(context.CorrelationId), out status, out body);
            }
            catch (TaskCanceledException)
            {
                // HttpClient reports its own timeout as a cancellation.
                throw new InvalidPluginExecutionException(string.Format(CultureInfo.InvariantCulture,
                    "The SMS channel did not answer within {0} s; the operation can be retried.",
                    _timeout.TotalSeconds));
            }
            catch (HttpRequestException error)
            {
                throw new InvalidPluginExecutionException(
                    "The SMS channel could not be reached (" + Describe(error) + "); the operation can be retried.",
                    error);
            }
            // Only the host, status and duration: the payload holds phone numbers and text.
            if (tracing != null)
            {
                tracing.Trace("SMS channel {0} answered {1} in {2:0} ms", _url.Host, status,
                    (DateTime.UtcNow - started).TotalMilliseconds);
            }
            if (status < 200 || status > 299)
            {
                // Never an invented NotSent: 503 and 409 mean "retry with the same RequestId".
                throw new InvalidPluginExecutionException(string.Format(CultureInfo.InvariantCulture,
                    "The SMS channel answered HTTP {0}{1}", status, Advice(status)));
            }
            context.OutputParameters[ResponseProperty] = body;
        }

        private void Send(string payload, string traceParent, out int status, out string body)
        {
            using (var client = new HttpClient())
            {
                client.Timeout = _timeout;
                // A fresh connection per call: the sandbox recycles workers, keep-alive only hurts.
                client.DefaultRequestHeaders.ConnectionClose = true;
                using (var request = new HttpRequestMessage(HttpMethod.Post, _url))
                {
                    request.Content = new StringContent(payload, new UTF8Encoding(false), "application/json");
                    request.Headers.TryAddWithoutValidation("x-functions-key", _key);
                    request.Headers.TryAddWithoutValidation("traceparent", traceParent);
                    using (var response = client.SendAsync(request).GetAwaiter().GetResult())
                    {
                        status = (int)response.StatusCode;
                        body = response.Content.ReadAsStringAsync().GetAwaiter().GetResult();
                    }
                }
            }
        }

        /// <summary>A W3C traceparent whose trace id is the Dataverse operation's CorrelationId.</summary>
        internal static string TraceParent(Guid correlationId)
        {
            var traceId = correlationId == Guid.Empty ? Guid.NewGuid() : correlationId;
            var spanId = Guid.NewGuid().ToString("N").Substring(0, 16);
            return "00-" + traceId.ToString("N") + "-" + spanId + "-01";
        }

        private static string Advice(int status)
        {
            switch (status)
            {
                case 401:
                case 403:
                    return ": check the function key in the step's secure configuration.";
                case 404:
                    return ": check the function URL in the step's unsecure configuration.";
                case 409:
                    return ": the same RequestId is still being sent; retry later.";
                case 429:
                case 503:
                    return ": the message was not sent or is not confirmed yet; retry later with the same RequestId.";
                default:
                    return ".";
            }
        }

        private static string Describe(Exception error)
        {
            var innermost = error;
            while (innermost.InnerException != null)
            {
                innermost = innermost.InnerException;
            }
            return innermost.Message;
        }
    }
}
