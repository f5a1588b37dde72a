import org.codelibs.opensearch.runner.OpenSearchRunner;

import static org.codelibs.opensearch.runner.OpenSearchRunner.newConfigs;

/**
 * Starts a single-node OpenSearch on 127.0.0.1 for tests.
 *
 * <p>Usage: {@code java -cp 'classes:lib/*' OpenSearchLauncher HTTP_PORT TRANSPORT_PORT BASE_DIR}.
 * Prints {@code WALBROOK_OPENSEARCH_READY http://127.0.0.1:HTTP_PORT} once the cluster is
 * yellow; on SIGTERM it closes the node and deletes BASE_DIR.
 */
public final class OpenSearchLauncher {
  private OpenSearchLauncher() {}

  public static void main(String[] args) throws Exception {
    int http = Integer.parseInt(args[0]);
    int transport = Integer.parseInt(args[1]);
    String base = args[2];
    OpenSearchRunner runner = new OpenSearchRunner();
    // The runner refuses HTTP ports above 9299 unless told otherwise; ours are random.
    runner.setMaxHttpPort(-1);
    runner
        .onBuild(
            (index, settings) -> {
              settings.put("discovery.type", "single-node");
              settings.put("network.host", "127.0.0.1");
              settings.put("http.port", Integer.toString(http));
              settings.put("transport.port", Integer.toString(transport));
            })
        .build(
            newConfigs()
                .basePath(base)
                .numOfNode(1)
                .clusterName("walbrook-test")
                .baseHttpPort(http - 1));
    runner.ensureYellow();
    Runtime.getRuntime()
        .addShutdownHook(
            new Thread(
                () -> {
                  try {
                    runner.close();
                  } catch (Exception e) {
                    // Shutting down anyway.
                  }
                  runner.clean();
                }));
    System.out.println("WALBROOK_OPENSEARCH_READY http://127.0.0.1:" + http);
    System.out.flush();
    Thread.currentThread().join();
  }
}
