// A minimal stand-in for the Microsoft.Xrm.Sdk types the plugin uses, with the real SDK's
// namespaces and member names (Microsoft.CrmSdk.CoreAssemblies), so the plugin's own source
// compiles unchanged under mono's mcs for the tests. Only what OutboundForwarder touches.
using System;
using System.Collections.Generic;

namespace Microsoft.Xrm.Sdk
{
    public interface IPlugin
    {
        void Execute(IServiceProvider serviceProvider);
    }

    public interface ITracingService
    {
        void Trace(string format, params object[] args);
    }

    public class DataCollection<TKey, TValue>
    {
        private readonly Dictionary<TKey, TValue> _items = new Dictionary<TKey, TValue>();

        public TValue this[TKey key]
        {
            get { return _items[key]; }
            set { _items[key] = value; }
        }

        public int Count
        {
            get { return _items.Count; }
        }

        public bool Contains(TKey key)
        {
            return _items.ContainsKey(key);
        }

        public bool TryGetValue(TKey key, out TValue value)
        {
            return _items.TryGetValue(key, out value);
        }
    }

    public sealed class ParameterCollection : DataCollection<string, object>
    {
    }

    public interface IExecutionContext
    {
        string MessageName { get; }
        Guid CorrelationId { get; }
        int Depth { get; }
        ParameterCollection InputParameters { get; }
        ParameterCollection OutputParameters { get; }
    }

    public interface IPluginExecutionContext : IExecutionContext
    {
        int Stage { get; }
    }

    public class InvalidPluginExecutionException : Exception
    {
        public InvalidPluginExecutionException(string message) : base(message)
        {
        }

        public InvalidPluginExecutionException(string message, Exception exception) : base(message, exception)
        {
        }
    }
}
