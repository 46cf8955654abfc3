package polyregion.searchnode;

import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

import org.opensearch.Build;
import org.opensearch.common.logging.LogConfigurator;
import org.opensearch.common.settings.Settings;
import org.opensearch.env.Environment;
import org.opensearch.node.Node;
import org.opensearch.transport.Netty4Plugin;

/**
 * Runs one OpenSearch node in this JVM until SIGTERM.
 *
 * <p>Arguments: HTTP_PORT TRANSPORT_PORT DIR. Everything the node writes goes
 * under DIR (data/, logs/, home/), so starting again with the same DIR keeps
 * the indices. HTTP and transport listen on 127.0.0.1 only; single-node
 * discovery; disk watermarks off; no security plugin.
 *
 * <p>Prints "SEARCHNODE READY engine=opensearch version=V http=127.0.0.1:PORT"
 * once the node has started, and "SEARCHNODE STOPPED" after a clean close.
 * With -Dsearchnode.exitOnStdinEOF=true it also closes cleanly when standard
 * input reaches end of file, so a node never outlives the process that
 * started it with a pipe.
 */
public final class OpenSearchNode {
    private OpenSearchNode() {}

    /** A node with the HTTP/transport module on the class path. */
    static final class EmbeddedNode extends Node {
        EmbeddedNode(Environment env) {
            super(env, List.of(Netty4Plugin.class), true);
        }
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 3) {
            System.err.println("usage: OpenSearchNode HTTP_PORT TRANSPORT_PORT DIR");
            System.exit(2);
        }
        int httpPort = Integer.parseInt(args[0]);
        int transportPort = Integer.parseInt(args[1]);
        Path dir = Paths.get(args[2]).toAbsolutePath();

        Path home = dir.resolve("home");
        Files.createDirectories(home.resolve("config"));
        Files.createDirectories(home.resolve("plugins"));
        Files.createDirectories(home.resolve("modules"));

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
        LogConfigurator.setNodeName("searchnode");
        LogConfigurator.configureWithoutConfig(settings);

        Node node;
        try {
            node = new EmbeddedNode(new Environment(settings, home.resolve("config")));
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
                started.close();
                started.awaitClose(30, TimeUnit.SECONDS);
                System.out.println("SEARCHNODE STOPPED");
            } catch (Throwable t) {
                System.err.println("SEARCHNODE close failed: " + t);
            }
            System.out.flush();
        }, "searchnode-shutdown"));

        System.out.println("SEARCHNODE READY engine=opensearch version=" + Build.CURRENT.getQualifiedVersion()
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
