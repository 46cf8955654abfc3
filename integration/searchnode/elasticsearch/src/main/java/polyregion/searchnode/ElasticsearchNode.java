package polyregion.searchnode;

import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

import org.elasticsearch.Build;
import org.elasticsearch.common.logging.LogConfigurator;
import org.elasticsearch.common.settings.Settings;
import org.elasticsearch.env.Environment;
import org.elasticsearch.node.Node;
import org.elasticsearch.plugins.PluginsLoader;

/**
 * Runs one Elasticsearch node in this JVM until SIGTERM.
 *
 * <p>Arguments: HTTP_PORT TRANSPORT_PORT DIR MODULES. Everything the node
 * writes goes under DIR (data/, logs/, home/), so starting again with the same
 * DIR keeps the indices. MODULES is the directory holding transport-netty4/
 * (built by this project). HTTP and transport listen on 127.0.0.1 only;
 * single-node discovery; disk watermarks off; no security (no X-Pack).
 *
 * <p>Prints "SEARCHNODE READY engine=elasticsearch version=V http=127.0.0.1:PORT"
 * once the node has started, and "SEARCHNODE STOPPED" after a clean close.
 * With -Dsearchnode.exitOnStdinEOF=true it also closes cleanly when standard
 * input reaches end of file, so a node never outlives the process that
 * started it with a pipe.
 */
public final class ElasticsearchNode {
    private ElasticsearchNode() {}

    public static void main(String[] args) throws Exception {
        if (args.length != 4) {
            System.err.println("usage: ElasticsearchNode HTTP_PORT TRANSPORT_PORT DIR MODULES");
            System.exit(2);
        }
        int httpPort = Integer.parseInt(args[0]);
        int transportPort = Integer.parseInt(args[1]);
        Path dir = Paths.get(args[2]).toAbsolutePath();
        Path modulesSrc = Paths.get(args[3]).toAbsolutePath();

        Path home = dir.resolve("home");
        Files.createDirectories(home.resolve("config"));
        Files.createDirectories(home.resolve("plugins"));
        Path modules = home.resolve("modules");
        if (Files.isSymbolicLink(modules)) {
            Files.delete(modules); // the build directory may have moved
        }
        if (!Files.exists(modules)) {
            Files.createSymbolicLink(modules, modulesSrc);
        }

        Settings settings = Settings.builder()
            .put("cluster.name", "polyregion-test")
            .put("node.name", "searchnode")
            .put("path.home", home.toString())
            .put("path.data", dir.resolve("data").toString())
            .put("path.logs", dir.resolve("logs").toString())
            .put("network.host", "127.0.0.1")
            .put("http.port", httpPort)
            .put("transport.port", transportPort)
            .put("discovery.type", "single-node")
            .put("cluster.routing.allocation.disk.threshold_enabled", false)
            .build();

        LogConfigurator.registerErrorListener();
        LogConfigurator.configureESLogging();
        LogConfigurator.setNodeName("searchnode");
        LogConfigurator.configureWithoutConfig(settings);

        Node node;
        try {
            Environment env = new Environment(settings, home.resolve("config"));
            PluginsLoader loader = PluginsLoader.createPluginsLoader(
                PluginsLoader.loadModulesBundles(env.modulesDir()),
                PluginsLoader.loadPluginsBundles(env.pluginsDir()),
                Map.of());
            node = new Node(env, loader);
            node.start();
        } catch (Throwable t) {
            System.err.println("SEARCHNODE FAILED: " + t);
            t.printStackTrace();
            System.out.flush();
            System.err.flush();
            Runtime.getRuntime().halt(1);
            return;
        }

        final Node started = node;
        CountDownLatch forever = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            System.out.println("SEARCHNODE STOPPING");
            try {
                started.prepareForClose();
                started.close();
                started.awaitClose(30, TimeUnit.SECONDS);
                System.out.println("SEARCHNODE STOPPED");
            } catch (Throwable t) {
                System.err.println("SEARCHNODE close failed: " + t);
            }
            System.out.flush();
        }, "searchnode-shutdown"));

        System.out.println("SEARCHNODE READY engine=elasticsearch version=" + Build.current().version()
            + " http=127.0.0.1:" + httpPort);
        System.out.flush();
        if (Boolean.getBoolean("searchnode.exitOnStdinEOF")) {
            Thread watch = new Thread(() -> {
                try {
                    while (System.in.read() >= 0) {
                        // ignore input; only end of file matters
                    }
                } catch (Exception e) {
                    // treat a broken stdin like end of file
                }
                System.out.println("SEARCHNODE standard input closed, stopping");
                System.exit(0);
            }, "searchnode-stdin");
            watch.setDaemon(true);
            watch.start();
        }
        forever.await();
    }
}
