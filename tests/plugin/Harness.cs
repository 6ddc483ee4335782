// Runs OutboundForwarder once the way Dataverse would, for tests/test_plugin.py:
//   mono harness.exe <unsecure configuration> <correlation id> <timeout seconds|default> <payload file> <response file>
// The secure configuration (the function key) comes from the environment variable
// HARNESS_SECURE_CONFIGURATION. Exit codes: 0 = `response` written to <response file>
// (UTF-8, no BOM); 2 = InvalidPluginExecutionException; 3 = any other exception.
// Trace lines and the exception go to stderr.
using System;
using System.Globalization;
using System.IO;
using System.Text;
using Microsoft.Xrm.Sdk;
using SmsChannel.Plugin;

namespace SmsChannel.Plugin.Tests
{
    internal sealed class Context : IPluginExecutionContext
    {
        private readonly ParameterCollection _input = new ParameterCollection();
        private readonly ParameterCollection _output = new ParameterCollection();

        public Context(Guid correlationId)
        {
            CorrelationId = correlationId;
        }

        public string MessageName { get { return "new_SmsOutbound"; } }
        public Guid CorrelationId { get; private set; }
        public int Depth { get { return 1; } }
        public int Stage { get { return 40; } }
        public ParameterCollection InputParameters { get { return _input; } }
        public ParameterCollection OutputParameters { get { return _output; } }
    }

    internal sealed class Tracing : ITracingService
    {
        public void Trace(string format, params object[] args)
        {
            Console.Error.WriteLine("trace: " + string.Format(CultureInfo.InvariantCulture, format, args));
        }
    }

    internal sealed class Services : IServiceProvider
    {
        private readonly Context _context;
        private readonly Tracing _tracing = new Tracing();

        public Services(Context context)
        {
            _context = context;
        }

        public object GetService(Type serviceType)
        {
            if (serviceType == typeof(IPluginExecutionContext)) return _context;
            if (serviceType == typeof(ITracingService)) return _tracing;
            return null;
        }
    }

    internal static class Harness
    {
        private static int Main(string[] args)
        {
            var unsecure = args[0];
            var secure = Environment.GetEnvironmentVariable("HARNESS_SECURE_CONFIGURATION");
            var context = new Context(Guid.Parse(args[1]));
            var plugin = args[2] == "default"
                ? new OutboundForwarder(unsecure, secure)
                : new OutboundForwarder(unsecure, secure,
                    TimeSpan.FromSeconds(double.Parse(args[2], CultureInfo.InvariantCulture)));
            if (args[3] != "-")
            {
                context.InputParameters["payload"] = File.ReadAllText(args[3], new UTF8Encoding(false));
            }
            try
            {
                plugin.Execute(new Services(context));
            }
            catch (InvalidPluginExecutionException error)
            {
                Console.Error.WriteLine("InvalidPluginExecutionException: " + error.Message);
                return 2;
            }
            catch (Exception error)
            {
                Console.Error.WriteLine(error.GetType().FullName + ": " + error.Message);
                return 3;
            }
            File.WriteAllText(args[4], (string)context.OutputParameters["response"], new UTF8Encoding(false));
            return 0;
        }
    }
}
