//! The dev-database helper starts a throwaway cluster when asked to.

use eventrail_devdb::{
    DevDbError, accepts_connections, database_url, postgres_bin_dir, recreate_database,
    start_throwaway_cluster, stop_throwaway_cluster,
};

#[tokio::test]
async fn recreate_database_starts_from_nothing_and_refuses_odd_names() -> anyhow::Result<()> {
    let admin_url = database_url().await?;
    let name = format!("eventrail_devdb_{}", uuid::Uuid::now_v7().simple());
    let url = recreate_database(&admin_url, &name).await?;
    let client = crate::harness::connect(&url).await?;
    let current: String = client
        .query_one("SELECT current_database()", &[])
        .await?
        .get(0);
    assert_eq!(current, name);
    client
        .batch_execute("CREATE TABLE left_over (n int)")
        .await?;
    // Again, while a session is still connected: it is closed and the database is empty.
    assert_eq!(recreate_database(&admin_url, &name).await?, url);
    let client = crate::harness::connect(&url).await?;
    let tables: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE tablename = 'left_over'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(tables, 0);
    drop(client);
    crate::harness::connect(&admin_url)
        .await?
        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await?;
    for bad in [
        "",
        "Upper",
        "9lives",
        "a-b",
        "x; DROP DATABASE postgres",
        &"a".repeat(64),
    ] {
        assert!(
            matches!(
                recreate_database(&admin_url, bad).await,
                Err(DevDbError::BadDatabaseName(_))
            ),
            "{bad:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn starts_reuses_and_stops_a_throwaway_cluster() -> anyhow::Result<()> {
    assert!(
        postgres_bin_dir().is_some(),
        "this machine has PostgreSQL binaries"
    );
    let dir = std::env::temp_dir()
        .join(format!(
            "eventrail-devdb-test-{}",
            uuid::Uuid::new_v4().simple()
        ))
        .join("data");
    let port = 54_331;
    let url = start_throwaway_cluster(&dir, port).await?;
    let result = async {
        assert!(accepts_connections(&url).await);
        let client = crate::harness::connect(&url).await?;
        let version: String = client.query_one("SHOW server_version", &[]).await?.get(0);
        assert!(!version.is_empty());
        // A second start finds it running and reuses it.
        assert_eq!(start_throwaway_cluster(&dir, port).await?, url);
        anyhow::Ok(())
    }
    .await;
    stop_throwaway_cluster(&dir)?;
    assert!(!accepts_connections(&url).await, "stopped");
    let _ = std::fs::remove_dir_all(dir.parent().expect("parent"));
    result
}
